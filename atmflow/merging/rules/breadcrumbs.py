"""Model Breadcrumbs (Davari & Belilovsky, 2023; a baseline of paper 000): drop the smallest and the
largest entries of every task vector, then Task Arithmetic.

Paper 000 (Sec. 4) states ``beta = 0.85`` and ``gamma = 0.993`` as percentiles of ``|tau|``: the
``1 - gamma`` largest entries (outliers) and everything below the ``beta`` percentile are dropped,
keeping a ``gamma - beta`` fraction (14.3%). ``theta = theta_0 + lambda * sum_t tau_t * mask_t``.
Two ways to draw ``mask_t`` (run-config key ``breadcrumbs-per-row``):

* **per row** (``1``, the default), as the official code (rezazzr/breadcrumbs,
  ``TaskVectorMiddleKeep`` with ``remove_first``): in every row of ``c`` entries, zero the
  ``floor(c * (1 - gamma))`` entries of largest ``|tau|``, then keep the ``floor(c * (gamma - beta))``
  largest of the rest (``topk`` counts, ties broken by position). A row is the last dimension of a
  matrix (a Linear weight: one output unit's inputs) and the whole of a vector; a convolution kernel
  ``[out, in, kh, kw]`` is taken as the matrix ``[out, in * kh * kw]`` (one output channel a row).
  The official code, written for transformers, uses the last dimension of every tensor: for a
  convolution that is the kernel width (1 or 3), where ``floor(3 * 0.143) = 0`` keeps nothing, so
  the rows differ from it on convolutions only. A 0-d tensor is kept whole (as there);
* **per tensor** (``0``): percentiles of ``|tau_t|`` over the whole tensor, ``mask_t = [q_beta <=
  |tau_t| <= q_gamma]`` (linear interpolation between order statistics, numpy's default
  ``quantile``). When row scales differ, as in real weights, the two masks differ (the rows with
  the largest entries keep everything they have in one tensor-wide threshold).

``beta = 0, gamma = 1`` keeps everything (Task Arithmetic) either way. Defaults ``beta = 0.85,
gamma = 0.993`` (paper 000), ``lambda = 0.3`` (as Task Arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskTensors, param, scale, total, unit


def between_percentiles(tau: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """``[q_beta <= |tau| <= q_gamma]``, quantiles of ``|tau|`` over the whole tensor."""
    magnitude = tau.abs()
    low, high = np.quantile(magnitude.reshape(-1).numpy(), [beta, gamma])
    return (magnitude >= float(low)) & (magnitude <= float(high))


def count(entries: int, fraction: float) -> int:
    """``floor(entries * fraction)`` as the official ``int(cols * fraction)``, without the float noise of a
    fraction given as a difference (``1 - 0.8`` is 0.19999999999999996: 10 x it must count 2)."""
    return math.floor(round(entries * fraction, 9))


def middle_of_rows(tau: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per row: False on the ``count(c, 1 - gamma)`` entries of largest ``|tau|``, True on the next
    ``count(c, gamma - beta)``, False below (rows: see the module docstring)."""
    if tau.dim() == 0:
        return torch.ones_like(tau, dtype=torch.bool)
    rows = tau.reshape(tau.shape[0], -1) if tau.dim() >= 2 else tau.reshape(1, -1)
    cols = rows.shape[1]
    drop, keep = count(cols, 1.0 - gamma), count(cols, gamma - beta)
    rank = torch.empty_like(rows, dtype=torch.long)  # 0 = the row's largest |tau|; ties by position
    order = rows.abs().argsort(dim=1, descending=True, stable=True)
    rank.scatter_(1, order, torch.arange(cols).expand_as(order).contiguous())
    return ((rank >= drop) & (rank < drop + keep)).reshape(tau.shape)


@dataclass
class Breadcrumbs(Rule):
    """Model Breadcrumbs: ``theta = theta_0 + lambda * sum_t tau_t * mask_t``, ``mask_t`` per row (the
    official rule) or by percentiles of the whole tensor (see the module docstring)."""

    name = "breadcrumbs"
    label = "Breadcrumbs"
    rank = 30
    sums_tasks = True
    beta: float = param(0.85, "lower percentile of |tau|: smaller entries are dropped", unit,
                        "0 <= beta <= 1", key="breadcrumbs-beta")
    gamma: float = param(0.993, "upper percentile of |tau|: larger entries (outliers) are dropped",
                         unit, "0 <= gamma <= 1", key="breadcrumbs-gamma")
    per_row: int = param(1, "1: mask each row by counts, as the official code; 0: percentiles of the whole "
                         "tensor", lambda v: v in (0, 1), "0 or 1", key="breadcrumbs-per-row")
    lam: float = scale(0.3, "scaling lambda of the summed masked task vectors")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta > self.gamma:
            raise ValueError(f"breadcrumbs: beta={self.beta} must not exceed gamma={self.gamma}")

    def update(self, t: TaskTensors) -> torch.Tensor:
        mask = middle_of_rows if self.per_row else between_percentiles
        return self.lam * total(tau * mask(tau, self.beta, self.gamma) for tau in t.taus)
