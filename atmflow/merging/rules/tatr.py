"""TATR, Task Arithmetic in the Trust Region (paper 003), alone and plugged into TIES.

With task vectors ``Delta_k`` and gradient estimates ``g_j`` at the pretrained model:

* ``g_j = E_{x in S_j} |grad L_j(x; theta_pre)|`` over an exemplar set ``S_j`` (Eq. 6; the paper
  uses 128 exemplars), passed as ``grads``; without them, zero-shot ``|g_j| ~ |Delta_j|`` (Eq. 7).
* Sensitivity (Eq. 8): ``Omega = sum_{i != j} |g_j| * |Delta_i|``, entrywise (``O(n)`` per entry).
* Trust region (Eq. 9 and Definition 2): ``epsilon`` is the ``m``-th largest Omega over all ``N``
  merged dimensions, ``m = int(tau * N)``; ``TR = {n : Omega[n] < epsilon}``, so the top ``tau``
  fraction of dimensions (and any tied with ``epsilon``) is excluded. ``tau = 0`` excludes nothing.
  Dimensions with ``Omega = 0`` (no other task moves them, or no gradient) cannot conflict and are
  always in ``TR``; without this rule, a model in which more than ``1 - tau`` of the dimensions
  have ``Omega = 0`` would exclude every dimension and return ``theta_pre``.
* TATR (Eq. 10): ``theta = theta_pre + lambda * sum_k Delta_k * 1[n in TR]``.
* TIES + TATR (Eq. 11): ``theta = theta_pre + lambda * sum_k Phi(Delta_k) * 1[n in TR]``, ``Phi`` the
  trim, elect and disjoint merge of TIES, Omega still from the raw task vectors.

Defaults: ``tau = 0.01`` (paper 003: best below 1%, tuned in {0.1, ..., 5}%), ``lambda = 0.3``
for TATR (as Task Arithmetic), TIES's ``k = 0.15`` and ``lambda = 1`` for TIES + TATR.

FusionBench's gradient TATR (``method/trust_region``) stores every task's gradients under one name
(the loop variable of the parameter loop), so Omega's sum over ``i != j`` is empty, the mask is
empty and it returns the pretrained model; here gradients are matched to tasks by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskStream, TaskTensors, param, scale, total, unit
from atmflow.merging.rules.ties import Ties


def sensitivity(t: TaskTensors) -> torch.Tensor:
    """``Omega = sum_{i != j} |g_j| * |Delta_i|`` (Eq. 8), ``|g_j| = |Delta_j|`` without gradients (Eq. 7).

    One task at a time, and without cancellation: each pair is added when its later task comes,
    ``Omega += |g_k| * sum_{i < k} |Delta_i| + |Delta_k| * sum_{j < k} |g_j|``.
    """
    for k, tau in enumerate(t.taus):
        delta = tau.abs()
        grad = delta if t.grads is None else t.grads[k].abs()
        if k == 0:
            omega, deltas_before, grads_before = torch.zeros_like(delta), delta.clone(), grad.clone()
            continue
        omega.addcmul_(grad, deltas_before).addcmul_(delta, grads_before)
        deltas_before += delta
        grads_before += grad
    return omega


def in_trust_region(omega: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``1[Omega < epsilon]``, and ``1`` where ``Omega = 0``."""
    return (omega < epsilon) | (omega == 0)


def trust_threshold(stream: TaskStream, fraction: float) -> float:
    """``epsilon`` (Eq. 9): the ``int(fraction * N)``-th largest Omega over all merged dimensions."""
    from atmflow.merging.select import top_fraction_thresholds

    return top_fraction_thresholds(lambda: ([sensitivity(t)] for t in stream), [fraction])[0]


def trust_fraction_param() -> Any:
    """The ``trust_fraction`` parameter (``tau`` of Eq. 9) of both TATR rules."""
    return param(0.01, "fraction tau of dimensions excluded from merging: those of largest Omega", unit,
                 "0 <= trust_fraction <= 1", key="tatr-trust-fraction")


@dataclass
class Tatr(Rule):
    """TATR (paper 003, Eq. 10): ``theta = theta_pre + lambda * sum_k Delta_k * 1[n in TR]``."""

    name = "tatr"
    label = "TATR"
    rank = 50
    sums_tasks = True
    uses_grads = True
    trust_fraction: float = trust_fraction_param()
    lam: float = scale(0.3, "scaling lambda of the summed task vectors")
    epsilon: float = field(default=float("inf"), init=False, repr=False)

    def prepare(self, stream: TaskStream) -> None:
        self.epsilon = trust_threshold(stream, self.trust_fraction)

    def update(self, t: TaskTensors) -> torch.Tensor:
        return self.lam * total(t.taus) * in_trust_region(sensitivity(t), self.epsilon)


@dataclass
class TiesTatr(Ties):
    """TIES + TATR (paper 003, Eq. 11): ``theta = theta_pre + lambda * sum_k Phi(Delta_k) * 1[n in TR]``."""

    name = "ties+tatr"
    label = "TIES+TATR"
    rank = 60
    uses_grads = True
    trust_fraction: float = trust_fraction_param()
    epsilon: float = field(default=float("inf"), init=False, repr=False)

    def prepare(self, stream: TaskStream) -> None:
        super().prepare(stream)
        self.epsilon = trust_threshold(stream, self.trust_fraction)

    def update(self, t: TaskTensors) -> torch.Tensor:
        return super().update(t) * in_trust_region(sensitivity(t), self.epsilon)
