"""Per-task splits and preprocessing.

Splits (all seeded by ``data-seed``, independent of the training ``seed``):

* test: the official test split where the source has one (Fashion-MNIST); otherwise a fixed 20% of
  the images is held out as the test pool. ``test-size`` images are drawn from the test pool.
* train / validation: ``train-size`` images are drawn from the rest; ``val-fraction`` of them
  (10%, as paper 001 Section 4) form the validation split, the others the training split.

Images become ``[N, 3, S, S]`` float tensors: grey -> bilinear resize to ``image-size`` -> three
identical channels -> ImageNet mean / std normalisation (what the pretrained backbone expects).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from atmflow.data.sources import DEFAULT_FASHION_MNIST_DIR, TASKS, RawTask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HELD_OUT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # [N, 3, S, S] float32, normalised
    y: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TaskData:
    name: str
    num_classes: int
    train: Split
    validation: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; allowed: train, validation, test")
        return getattr(self, name)


def preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W]`` grey images -> normalised ``[N, 3, size, size]`` float32."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _pools(raw: RawTask, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if raw.test_images is not None and raw.test_labels is not None:
        return raw.images, raw.labels, raw.test_images, raw.test_labels
    order = rng.permutation(len(raw.labels))
    n_test = int(round(HELD_OUT_TEST_FRACTION * len(order)))
    test, train = order[:n_test], order[n_test:]
    return raw.images[train], raw.labels[train], raw.images[test], raw.labels[test]


def make_splits(
    name: str, raw: RawTask, *, train_size: int, test_size: int, val_fraction: float,
    image_size: int, seed: int,
) -> TaskData:
    """Draw the task's train / validation / test splits (see module docstring)."""
    rng = np.random.default_rng(seed)
    x_pool, y_pool, x_test_pool, y_test_pool = _pools(raw, rng)
    for what, want, have in (("train-size", train_size, len(y_pool)), ("test-size", test_size, len(y_test_pool))):
        if want > have:
            raise ValueError(f"{what}={want} is larger than task {name!r} allows ({have} images available)")
    picked = rng.permutation(len(y_pool))[:train_size]
    n_val = max(1, int(round(val_fraction * train_size)))
    val_idx, train_idx = picked[:n_val], picked[n_val:]
    test_idx = rng.permutation(len(y_test_pool))[:test_size]

    def split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        return Split(preprocess(x[idx], image_size), torch.from_numpy(y[idx]))

    return TaskData(name, raw.num_classes, split(x_pool, y_pool, train_idx),
                    split(x_pool, y_pool, val_idx), split(x_test_pool, y_test_pool, test_idx))


@lru_cache(maxsize=16)
def load_task(name: str, *, train_size: int, test_size: int, val_fraction: float, image_size: int,
              seed: int, data_dir: str = DEFAULT_FASHION_MNIST_DIR) -> TaskData:
    """Load and split one task (cached per process: a client answers many messages)."""
    raw = TASKS[name](data_dir)
    return make_splits(name, raw, train_size=train_size, test_size=test_size, val_fraction=val_fraction,
                       image_size=image_size, seed=seed)
