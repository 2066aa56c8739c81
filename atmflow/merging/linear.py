"""Linear merge rules: Task Arithmetic and the ATM mean update."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atmflow.merging.task_vectors import StateDict, add_scaled, check_compatible


def _sum(vectors: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([v[k] for v in vectors]).sum(0) for k in vectors[0]}


def task_arithmetic(base: StateDict, vectors: Sequence[StateDict], lam: float) -> dict[str, torch.Tensor]:
    """Task Arithmetic (Ilharco et al., 2023): ``theta = theta_0 + lambda * sum_t tau_t``."""
    check_compatible(base, vectors)
    return add_scaled(base, _sum(vectors), lam)


def mean_merge(base: StateDict, vectors: Sequence[StateDict], alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """ATM update (paper 000, Eq. 5): ``theta^(k+1) = theta^(k) + alpha / |T| * sum_t tau_t^(k)``.

    An unweighted mean over tasks (not FedAvg's weighting by number of examples).
    """
    check_compatible(base, vectors)
    return add_scaled(base, _sum(vectors), alpha / len(vectors))
