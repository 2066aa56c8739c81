"""The model-family and task registries (the seam every model family plugs into)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atmflow.client.task import use_amp
from atmflow.config import ConfigError, RunConfig, load_config
from atmflow.data import tasks
from atmflow.data.embedded import RawTask
from atmflow.data.examples import LazyInputs, batch_to, materialise
from atmflow.data.images import imagenet_preprocess
from atmflow.data.tasks import DataLocation, TaskSpec, data_location, parse_data_sources
from atmflow.models.family import get_family
from atmflow.models.mobilenet import MobileNetV2Encoder, MobileNetV2Family


class Column:
    """A lazily decoded column, as the Hugging Face loaders give (counts what was decoded)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.decoded = images, 0

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: list[int]) -> list[np.ndarray]:
        self.decoded += len(indices)
        return self.images[indices]


def test_default_family_is_the_embedded_mobilenet() -> None:
    cfg = RunConfig()
    assert (cfg.model_family, cfg.model_name, cfg.pretrained_source, cfg.head_kind) == (
        "mobilenet-v2", "mobilenet-v2", "imagenet", "probe")
    family = get_family(cfg)
    assert isinstance(family, MobileNetV2Family) and get_family(RunConfig()) is family
    a, b = family.pretrained_encoder(), family.pretrained_encoder()
    assert isinstance(a, MobileNetV2Encoder) and a is not b  # fresh copies: callers may modify them
    assert family.trainable_keys(a) == [k for k, _ in a.named_parameters()]
    assert family.preprocess(np.zeros((2, 28, 28), np.uint8)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model-family": "resnet"},
         "unknown model-family 'resnet'; allowed: hf-text, hf-vision, mobilenet-v2, open_clip, torchvision"),
        ({"head": "zeroshot"}, "head='zeroshot' is not available for model-family 'mobilenet-v2'"),
        ({"train-size": 5}, "train-size: must be 0 (all examples) or at least 10 (got 5)"),
        ({"data-sources": "mnist"}, "data-sources entry 'mnist' is not 'task=location'"),
        ({"data-sources": "mnist=/data/mnist"}, "task 'mnist' ships inside an installed package"),
        ({"data-sources": "foo=/x"}, "unknown task 'foo'"),
        ({"amp": "bf16", "precision": "float64"}, "amp='bf16' (autocast) needs precision='float32'"),
    ],
)
def test_family_settings_are_validated(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert expected in str(err.value)


def test_mobilenet_family_has_one_model() -> None:
    with pytest.raises(ValueError, match="model-family 'mobilenet-v2' has one model"):
        get_family(RunConfig(model="ViT-B-16"))


def test_tasks_must_match_the_family_modality(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TaskSpec("reviews", "text", lambda where: RawTask(["good", "bad"], np.array([1, 0]), 2))
    monkeypatch.setitem(tasks.TASK_REGISTRY, "reviews", spec)
    with pytest.raises(ConfigError, match=r"task\(s\) \['reviews'\] are not image tasks"):
        load_config({"tasks": "mnist,reviews"})


def test_data_location_order(tmp_path: Path) -> None:
    assert parse_data_sources(" fashion-mnist = /a ,") == {"fashion-mnist": "/a"}
    assert data_location("fashion-mnist", RunConfig()) == DataLocation("/usr/share/datasets/fashion-mnist", "")
    (tmp_path / "fashion-mnist").mkdir()
    cfg = RunConfig(dataset_dir=str(tmp_path), hf_cache_dir="/cache")
    assert data_location("fashion-mnist", cfg) == DataLocation(str(tmp_path / "fashion-mnist"), "/cache")
    cfg = RunConfig(dataset_dir=str(tmp_path), data_sources="fashion-mnist=/b")
    assert data_location("fashion-mnist", cfg).source == "/b"


def test_lazy_inputs_equal_the_eager_tensor() -> None:
    images = np.random.default_rng(0).integers(0, 255, (40, 12, 12), dtype=np.uint8)
    idx = np.arange(39, -1, -3)

    def prep(x: object) -> torch.Tensor:
        return imagenet_preprocess(x, 16)

    eager = materialise(images, idx, prep)
    column = Column(images)
    lazy = materialise(column, idx, prep, workers=2)
    assert isinstance(eager, torch.Tensor) and isinstance(lazy, LazyInputs) and column.decoded == 0
    assert len(lazy) == len(idx) and lazy.shape == eager.shape
    pick = torch.tensor([3, 0, 7, 5, 1, 2, 4, 6, 8, 9])
    assert torch.equal(lazy[pick], eager[pick]) and torch.equal(lazy[2:9], eager[2:9])
    assert torch.equal(lazy[4], eager[4])


def test_batch_to_keeps_token_ids_integer() -> None:
    cpu = torch.device("cpu")
    assert batch_to(torch.ones(2, 3, dtype=torch.long), cpu, torch.float64).dtype == torch.long
    assert batch_to(torch.ones(2, 3), cpu, torch.float64).dtype == torch.float64


def test_amp_only_on_cuda() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_amp(RunConfig(), cpu) and use_amp(RunConfig(), cuda)
    assert not use_amp(RunConfig(precision="float64"), cuda) and not use_amp(RunConfig(amp="off"), cuda)
    with pytest.raises(RuntimeError, match="amp='bf16' needs a CUDA device"):
        use_amp(RunConfig(amp="bf16"), cpu)
