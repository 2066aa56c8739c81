"""Model Breadcrumbs (Davari & Belilovsky, 2023; a baseline of paper 000): drop the smallest and the
largest entries of every task vector, then Task Arithmetic.

Convention (paper 000, Sec. 4: "beta = 0.85 and gamma = 0.993"), read as percentiles of ``|tau|``
per tensor: for each task ``t`` and tensor, with ``q_p`` the ``p``-quantile of ``|tau_t|`` over the
tensor's entries (linear interpolation between order statistics, numpy's default ``quantile``),

    ``mask_t = [q_beta <= |tau_t| <= q_gamma]``,  ``theta = theta_0 + lambda * sum_t tau_t * mask_t``.

So ``beta = 0.85, gamma = 0.993`` keeps the 14.3% of entries just below the top 0.7% (the
outliers). ``beta = 0, gamma = 1`` keeps everything (Task Arithmetic). The official code
(rezazzr/breadcrumbs) works per row of the last dimension and counts entries (``topk`` of
``int(cols * fraction)``) instead of percentiles; the two agree up to rounding at the boundaries.
Defaults ``beta = 0.85, gamma = 0.993`` (paper 000), ``lambda = 0.3`` (as Task Arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskTensors, param, scale, total, unit


def between_percentiles(tau: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """``[q_beta <= |tau| <= q_gamma]``, quantiles of ``|tau|`` over the whole tensor."""
    magnitude = tau.abs()
    low, high = np.quantile(magnitude.reshape(-1).numpy(), [beta, gamma])
    return (magnitude >= float(low)) & (magnitude <= float(high))


@dataclass
class Breadcrumbs(Rule):
    """Model Breadcrumbs: ``theta = theta_0 + lambda * sum_t tau_t * [q_beta <= |tau_t| <= q_gamma]``."""

    name = "breadcrumbs"
    label = "Breadcrumbs"
    rank = 30
    sums_tasks = True
    beta: float = param(0.85, "lower percentile of |tau| per tensor: smaller entries are dropped", unit,
                        "0 <= beta <= 1", key="breadcrumbs-beta")
    gamma: float = param(0.993, "upper percentile of |tau| per tensor: larger entries (outliers) are dropped",
                         unit, "0 <= gamma <= 1", key="breadcrumbs-gamma")
    lam: float = scale(0.3, "scaling lambda of the summed masked task vectors")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta > self.gamma:
            raise ValueError(f"breadcrumbs: beta={self.beta} must not exceed gamma={self.gamma}")

    def update(self, t: TaskTensors) -> torch.Tensor:
        return self.lam * total(tau * between_percentiles(tau, self.beta, self.gamma) for tau in t.taus)
