"""Exact top-fraction thresholds over values streamed tensor by tensor (radix selection).

TIES keeps, per task, the top ``k`` fraction of ``|tau_t|`` over all of the task's parameters, and
TATR excludes the top ``tau`` fraction of Omega over all dimensions (paper 003, Eq. 9): both need the
``m``-th largest of ``d`` values, ``m = int(fraction * d)``, with ``d`` up to billions. Sorting
(or flattening into one ``n x d`` matrix, as the official TIES code does) needs memory for all of
them. Here the values are never held together: for non-negative IEEE-754 floats the order of the
values is the order of their bit patterns read as integers, so the ``m``-th largest is found one
16-bit digit at a time, most significant first, by counting digits in a 65,536-bin histogram per
pass: two passes for float32 values, four for float64. Exact, ties included: the answer is the value
at position ``m`` of a descending sort. The bit arithmetic runs in numpy (single-threaded, and
several times faster than torch's multi-threaded kernels on a busy machine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

DIGIT_BITS = 16
_BINS = 1 << DIGIT_BITS
_AS_INT = {torch.float32: np.int32, torch.float64: np.int64}
_AS_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


class _Column:
    """The selection state of one column: the high bits of the answer found so far, and the rank left."""

    def __init__(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a top fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.dtype: torch.dtype | None = None
        self.free_bits = 0  # low bits of the answer not fixed yet
        self.prefix = 0  # the fixed high bits
        self.rank = 0  # 1-based rank, from the top, among the values whose high bits are ``prefix``
        self.result: float | None = None

    def histogram(self, values: torch.Tensor) -> np.ndarray:
        """Counts of the next digit among ``values`` whose high bits are ``prefix``."""
        if values.dtype not in _AS_INT:
            raise ValueError(f"selection needs float32 or float64 values, got {values.dtype}")
        if self.dtype is None:
            self.dtype = values.dtype
            self.free_bits = torch.finfo(values.dtype).bits
        elif values.dtype != self.dtype:
            raise ValueError(f"cannot select over a mix of {self.dtype} and {values.dtype} tensors; "
                             "merge tensors of one floating-point precision (half precision counts as float32)")
        keys = values.detach().contiguous().reshape(-1).numpy().view(_AS_INT[values.dtype])
        if self.rank:
            keys = keys[(keys >> self.free_bits) == self.prefix]
        return np.bincount((keys >> (self.free_bits - DIGIT_BITS)) & (_BINS - 1), minlength=_BINS)

    def descend(self, histogram: np.ndarray) -> None:
        """Fix the next digit: the bin that holds the ``rank``-th largest value."""
        if not self.rank:
            m = int(self.fraction * int(histogram.sum()))
            if m == 0:
                self.result = float("inf")
                return
            self.rank = m
        from_top = np.cumsum(histogram[::-1])
        i = int(np.searchsorted(from_top, self.rank))
        digit = _BINS - 1 - i
        self.rank -= int(from_top[i] - histogram[digit])
        self.prefix = (self.prefix << DIGIT_BITS) | digit
        self.free_bits -= DIGIT_BITS
        if self.free_bits == 0:
            assert self.dtype is not None
            self.result = float(np.array(self.prefix, dtype=_AS_INT[self.dtype]).view(_AS_FLOAT[self.dtype]))


def top_fraction_thresholds(columns: Callable[[], Iterable[Sequence[torch.Tensor]]],
                            fractions: Sequence[float]) -> list[float]:
    """For each column ``c``, the ``m_c``-th largest of its values, ``m_c = int(fractions[c] * d_c)``.

    ``columns()`` starts one pass: it yields, tensor by tensor, one tensor of non-negative float32 or
    float64 values per column (``d_c`` values in all), and must yield the same values at every
    pass. ``inf`` when ``m_c = 0`` (no value is that large). Memory: one histogram per column.
    """
    state = [_Column(f) for f in fractions]
    while any(col.result is None for col in state):
        histograms = [np.zeros(_BINS, dtype=np.int64) for _ in state]
        for tensors in columns():
            for col, hist, values in zip(state, histograms, tensors, strict=True):
                if col.result is None:
                    hist += col.histogram(values)
        for col, hist in zip(state, histograms, strict=True):
            if col.result is None:
                col.descend(hist)
    return [float(col.result) for col in state if col.result is not None]
