"""How a task's raw examples become the tensors the training and evaluation loops index.

A split's inputs ``Split.x`` are either

* a tensor (small data: preprocessed once): images float ``[N, C, H, W]``; texts token ids
  LongTensor ``[N, L]`` padded with the tokenizer's pad id; or
* a :class:`LazyInputs` view (large data such as the paper's vision sets, where all images as
  float tensors would not fit in memory): ``len(view)`` and ``view[index]`` with an int, a slice,
  or an index tensor / array give the preprocessed batch tensor, decoded on demand.

The loops only use ``len(split)``, ``split.x[index]`` and ``.to(device, dtype)`` on the result, so
they run unchanged on both. A model family with a random training transform (open_clip) also gives
the train and validation splits an :class:`AugmentedInputs` view, which fine-tuning draws its batches
from (``train-transform``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# examples (a batch, in the source's own form) -> tensor batch; the model family's preprocessing
Preprocess = Callable[[Any], torch.Tensor]


@runtime_checkable
class ExampleColumn(Protocol):
    """A lazily decoded column of examples (e.g. the images of a Hugging Face data set)."""

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int]) -> list[Any]:
        """The examples at ``indices`` (decoded: PIL images, strings ...), in that order."""
        ...


def take(inputs: Any, indices: np.ndarray) -> Any:
    """The examples of ``inputs`` (array, list or :class:`ExampleColumn`) at ``indices``."""
    if isinstance(inputs, np.ndarray | torch.Tensor):
        return inputs[indices]
    if isinstance(inputs, ExampleColumn):
        return inputs.take([int(i) for i in indices])
    return [inputs[int(i)] for i in indices]


class LazyInputs:
    """Preprocessed examples ``inputs[indices]``, decoded and preprocessed when indexed.

    ``workers > 0`` preprocesses a batch in that many threads (PIL decoding and resizing release
    the GIL); the result does not depend on ``workers``.
    """

    def __init__(self, inputs: ExampleColumn, indices: np.ndarray, preprocess: Preprocess, workers: int = 0) -> None:
        self.inputs, self.indices, self.preprocess, self.workers = inputs, np.asarray(indices), preprocess, workers

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | slice | torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        picked = self.indices[index] if isinstance(index, slice) else self.indices[np.asarray(index, dtype=np.int64)]
        if self.workers <= 0 or len(picked) < 2 * self.workers:
            return self.preprocess(take(self.inputs, picked))
        chunks = np.array_split(picked, self.workers)
        with ThreadPoolExecutor(self.workers) as pool:
            parts = list(pool.map(lambda c: self.preprocess(take(self.inputs, c)), chunks))
        return torch.cat(parts)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, *example_shape)``, from the first example."""
        return (len(self), *self[0:1].shape[1:])


class AugmentedInputs:
    """Examples ``inputs[indices]`` through a random training transform (open_clip's: a random resized crop),
    drawn anew for every batch: ``view.batch(index, seed)`` seeds torch's generator (forked: the caller's
    stream is untouched) before transforming, so a batch is a function of its examples and ``seed``. It runs
    in the calling thread, since the transform draws from torch's global generator."""

    def __init__(self, inputs: Any, indices: np.ndarray, transform: Preprocess) -> None:
        self.inputs, self.indices, self.transform = inputs, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, index: torch.Tensor | np.ndarray | Sequence[int], seed: int) -> torch.Tensor:
        examples = take(self.inputs, self.indices[np.asarray(index, dtype=np.int64)])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(examples)


def materialise(inputs: Any, indices: np.ndarray, preprocess: Preprocess,
                workers: int = 0) -> torch.Tensor | LazyInputs:
    """A split's inputs: a :class:`LazyInputs` view for a lazy column, else the preprocessed tensor."""
    if isinstance(inputs, ExampleColumn) and not isinstance(inputs, np.ndarray | list | tuple | torch.Tensor):
        return LazyInputs(inputs, indices, preprocess, workers)
    return preprocess(take(inputs, indices))


def batch_to(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Move an input batch to ``device``; float inputs (images) take the model's ``dtype``, integer
    inputs (token ids) stay integers."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)
