from __future__ import annotations

import numpy as np
import pytest
import torch

from atmflow.client.task import load_task
from atmflow.config import RunConfig
from atmflow.data.embedded import TASKS, DataUnavailableError, RawTask, load_fashion_mnist
from atmflow.data.images import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess
from atmflow.data.splits import Split, literature_split, make_splits


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_real_images(name: str) -> None:
    raw = TASKS[name]("/usr/share/datasets/fashion-mnist")
    assert raw.inputs.dtype == np.uint8 and raw.inputs.ndim == 3 and raw.inputs.max() > 200
    assert raw.num_classes == 10 and set(np.unique(raw.labels)) == set(range(10))
    assert len(raw.inputs) == len(raw.labels) >= 1797 and len(raw.class_names) == 10


def _tagged_digits() -> RawTask:
    """Digits whose first two pixels encode the image's index (to trace images through the splits)."""
    raw = TASKS["digits"]("")
    images = raw.inputs.copy()
    ids = np.arange(len(images))
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return RawTask(images, raw.labels, 10)


def _ids(split: Split) -> set[int]:
    pixels = ((split.x[:, 0, 0, :2] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).round().long()
    return set((pixels[:, 0] * 256 + pixels[:, 1]).tolist())


def test_splits_are_disjoint_sized_and_seeded() -> None:
    raw = _tagged_digits()
    kw = dict(train_size=1400, test_size=300, val_fraction=0.1, preprocess=lambda x: imagenet_preprocess(x, 8))
    data = make_splits("digits", raw, seed=0, **kw)
    assert (len(data.train), len(data.validation), len(data.test)) == (1260, 140, 300)
    train, val, test = _ids(data.train), _ids(data.validation), _ids(data.test)
    assert len(train) == 1260 and len(val) == 140 and len(test) == 300
    assert not (train & val) and not (train & test) and not (val & test)
    again = make_splits("digits", raw, seed=0, **kw)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    assert _ids(make_splits("digits", raw, seed=1, **kw).train) != train
    with pytest.raises(ValueError, match="train-size=1500 is larger than task 'digits' allows"):
        make_splits("digits", raw, seed=0, **{**kw, "train_size": 1500})


def test_fashion_mnist_uses_the_official_test_split() -> None:
    raw = load_fashion_mnist("/usr/share/datasets/fashion-mnist")
    assert raw.inputs.shape == (60000, 28, 28) and raw.test_inputs is not None
    assert raw.test_inputs.shape == (10000, 28, 28)


def test_missing_fashion_mnist_says_how_to_install(tmp_path) -> None:
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))


def test_preprocess_resizes_to_three_normalised_channels() -> None:
    x = imagenet_preprocess(np.zeros((2, 28, 28), np.uint8), 64)
    assert x.shape == (2, 3, 64, 64)
    assert torch.allclose(x[:, 0], torch.full((2, 64, 64), -IMAGENET_MEAN[0] / 0.229))


def test_load_task_is_cached() -> None:
    cfg = RunConfig(train_size=50, test_size=20, image_size=32)
    assert load_task("mnist", cfg) is load_task("mnist", cfg)


def test_literature_split_matches_the_task_vector_code() -> None:
    """train-size = 0: the split of task_vectors' split_train_into_train_val (their MNIST check:
    the first training index of MNIST's 60,000 is 36044), validation floor(10%) capped at 5,000."""
    train, val = literature_split(60000, 0.1, 5000, 0)
    assert train[0] == 36044 and (len(train), len(val)) == (55000, 5000)
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    train, val = literature_split(1799, 0.1, 5000, 0)
    assert (len(train), len(val)) == (1620, 179)


def test_all_examples_split_uses_the_official_test_split() -> None:
    rng = np.random.default_rng(0)
    raw = RawTask(rng.integers(0, 255, (120, 8, 8), dtype=np.uint8), rng.integers(0, 3, 120), 3,
                  rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), rng.integers(0, 3, 30), ("a", "b", "c"))
    data = make_splits("t", raw, train_size=0, test_size=0, val_fraction=0.1, seed=0,
                       preprocess=lambda x: torch.from_numpy(x).float())
    assert (len(data.train), len(data.validation), len(data.test)) == (108, 12, 30)
    assert torch.equal(data.test.x, torch.from_numpy(raw.test_inputs).float())  # all of it, in order
    assert data.class_names == ("a", "b", "c")
