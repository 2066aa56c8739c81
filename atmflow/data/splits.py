"""Per-task splits: train / validation / test, drawn from a :class:`RawTask` with a seed.

Splits (all seeded by ``data-seed``, independent of the training ``seed``):

* test: the official test split where the source has one (Fashion-MNIST and the paper's vision and
  text data sets); otherwise a fixed 20% of the examples is held out as the test pool.
  ``test-size`` examples are drawn from the test pool (``test-size = 0``: all of it).
* train / validation: ``train-size`` examples are drawn from the rest (``train-size = 0``: all of
  it); ``val-fraction`` of them (10%), at most ``val-max`` (5,000), form the validation split, the
  others the training split. With ``train-size = 0`` the split is exactly the task-vector
  literature's (paper 001 Section 4, the ATM and task_vectors code): validation = floor(10%) of
  train, at most 5,000, by ``torch`` ``random_split`` with seed ``data-seed`` (0); see
  :func:`literature_split`. With ``test-size = 0`` the test split is the whole test pool.

The model family's ``preprocess`` turns the selected examples into the split's input tensor (see
:mod:`atmflow.data.examples`); large lazily decoded sources give lazy views instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atmflow.data.embedded import RawTask
from atmflow.data.examples import AugmentedInputs, LazyInputs, Preprocess, materialise
from atmflow.data.tasks import VAL_MAX

HELD_OUT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    x: torch.Tensor | LazyInputs  # [N, ...] preprocessed inputs (or a lazy view yielding them)
    y: torch.Tensor  # [N] int64
    augmented: AugmentedInputs | None = None  # the same examples through the family's training transform

    def __len__(self) -> int:
        return len(self.y)

    def train_batch(self, index: torch.Tensor, seed: int) -> torch.Tensor:
        """The inputs a fine-tuning step sees: through the training transform (seeded) when the split has
        one, else the preprocessed inputs ``x[index]``."""
        return self.x[index] if self.augmented is None else self.augmented.batch(index, seed)


@dataclass(frozen=True)
class TaskData:
    name: str
    num_classes: int
    train: Split
    validation: Split
    test: Split
    class_names: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; allowed: train, validation, test")
        return getattr(self, name)


def _pools(raw: RawTask, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train pool indices, train pool labels, test pool indices, test pool labels); the test pool
    indexes ``raw.test_inputs`` when the source has an official test split, else ``raw.inputs``."""
    if raw.test_inputs is not None and raw.test_labels is not None:
        return np.arange(len(raw.labels)), raw.labels, np.arange(len(raw.test_labels)), raw.test_labels
    order = rng.permutation(len(raw.labels))
    n_test = int(round(HELD_OUT_TEST_FRACTION * len(order)))
    test, train = order[:n_test], order[n_test:]
    return train, raw.labels[train], test, raw.labels[test]


def literature_split(n: int, val_fraction: float, val_max: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``n`` training examples exactly as the task-vector code splits
    them (``split_train_into_train_val``: ``torch.utils.data.random_split`` into ``n - v`` and
    ``v = min(floor(val_fraction * n), val_max)`` with ``torch.Generator().manual_seed(seed)``)."""
    n_val = min(int(n * val_fraction), val_max)
    if not 0 < n_val < n:
        raise ValueError(f"a validation split of {n_val} examples out of {n} leaves no train or validation data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return order[: n - n_val], order[n - n_val :]


def make_splits(name: str, raw: RawTask, *, train_size: int, test_size: int, val_fraction: float, seed: int,
                preprocess: Preprocess, val_max: int = VAL_MAX, workers: int = 0,
                train_preprocess: Preprocess | None = None) -> TaskData:
    """Draw the task's train / validation / test splits (see module docstring); with ``train_preprocess`` (a
    random training transform) the train and validation splits, which fine-tuning may use, also carry
    their examples through it (``Split.augmented``)."""
    rng = np.random.default_rng(seed)
    pool, y_pool, test_pool, y_test_pool = _pools(raw, rng)
    for what, want, have in (("train-size", train_size, len(y_pool)), ("test-size", test_size, len(y_test_pool))):
        if want > have:
            raise ValueError(f"{what}={want} is larger than task {name!r} allows ({have} examples available)")
    if train_size:
        picked = rng.permutation(len(y_pool))[:train_size]
        n_val = min(val_max, max(1, int(round(val_fraction * train_size))))
        val_idx, train_idx = picked[:n_val], picked[n_val:]
    else:
        train_idx, val_idx = literature_split(len(y_pool), val_fraction, val_max, seed)
    test_idx = rng.permutation(len(y_test_pool))[:test_size] if test_size else np.arange(len(y_test_pool))
    test_inputs = raw.inputs if raw.test_inputs is None else raw.test_inputs

    def split(inputs: object, where: np.ndarray, labels: np.ndarray, idx: np.ndarray, train: bool = False) -> Split:
        augmented = AugmentedInputs(inputs, where[idx], train_preprocess) if train and train_preprocess else None
        return Split(materialise(inputs, where[idx], preprocess, workers), torch.from_numpy(labels[idx]), augmented)

    return TaskData(name, raw.num_classes, split(raw.inputs, pool, y_pool, train_idx, train=True),
                    split(raw.inputs, pool, y_pool, val_idx, train=True),
                    split(test_inputs, test_pool, y_test_pool, test_idx), raw.class_names)
