"""TIES-Merging (Yadav et al., 2023; a baseline of paper 000): trim, elect sign, disjoint mean.

For task vectors ``tau_1 .. tau_n`` of ``d`` parameters each:

1. **Trim**, per task over ALL its parameters at once (global per task, as the official code
   prateeky2806/ties-merging; mergekit trims per tensor instead):
   ``hat tau_t = tau_t * [|tau_t| >= v_t]``, ``v_t`` the ``m``-th largest ``|tau_t|``,
   ``m = int(k * d)``. Values tied with ``v_t`` are kept too. (The official code thresholds at the
   ``(m+1)``-th largest value, so it keeps one value more per task.)
2. **Elect**: ``gamma = sgn(sum_t hat tau_t)``; where that sum is 0, ``gamma`` is the sign of the
   sum of all elected signs over the whole model (the official ``resolve_zero_signs``, "majority").
   Where even that is 0, the official code keeps the negative values, and so does this one.
3. **Disjoint mean**: ``tau_m = sum_t hat tau_t [sgn hat tau_t = gamma] / max(#{t : sgn hat tau_t = gamma}, 1)``:
   the MEAN over the agreeing tasks (FusionBench defaults to their sum instead).

``theta = theta_0 + lambda * tau_m``. Defaults: ``k = 0.15`` (paper 000's TIES baseline keeps the top
15%, and atmflow reproduces paper 000's comparisons; the TIES paper and its official code keep the top
20%: ``ties-k = 0.2``; docs/merging.md), ``lambda = 1`` (paper 000: scaling 1).
The thresholds ``v_t`` come from an exact streaming selection (``select.py``), and the majority sign
from one more pass, so memory never holds more than one tensor of every task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskStream, TaskTensors, param, scale, total


def trim(tau: torch.Tensor, threshold: float) -> torch.Tensor:
    """``tau * [|tau| >= threshold]``."""
    return tau * (tau.abs() >= threshold)


def elect(trimmed: list[torch.Tensor]) -> torch.Tensor:
    """``sgn(sum_t hat tau_t)`` (0 where the sum is 0)."""
    return torch.sign(total(trimmed))


def disjoint_mean(trimmed: list[torch.Tensor], gamma: torch.Tensor) -> torch.Tensor:
    """Mean of the entries whose sign is ``gamma`` (entries of other or no sign are left out).

    Where ``gamma`` is 0 the negative entries are taken, as ``torch.where(gamma > 0, x > 0, x < 0)`` in
    the official code.
    """
    direction = torch.where(gamma > 0, 1.0, -1.0)
    agree = [x * direction > 0 for x in trimmed]
    sums = total([x * a for x, a in zip(trimmed, agree, strict=True)])
    counts = total([a.to(sums.dtype) for a in agree])
    return sums / counts.clamp(min=1)


@dataclass
class Ties(Rule):
    """TIES-Merging: ``theta = theta_0 + lambda * disjoint_mean(trim(tau), elect(trim(tau)))``."""

    name = "ties"
    label = "TIES"
    rank = 20
    k: float = param(0.15, "fraction of each task vector kept: its top-k by magnitude over all its parameters "
                           "(paper 000: 0.15; the TIES paper: 0.2)", lambda v: 0.0 < v <= 1.0, "0 < k <= 1",
                     key="ties-k")
    lam: float = scale(1.0, "scaling lambda of the disjoint mean")
    thresholds: list[float] = field(default_factory=list, init=False, repr=False)
    majority: float = field(default=0.0, init=False, repr=False)

    def prepare(self, stream: TaskStream) -> None:
        from atmflow.merging.select import top_fraction_thresholds

        self.thresholds = top_fraction_thresholds(lambda: ([tau.abs() for tau in t.taus] for t in stream),
                                                  [self.k] * stream.n_tasks)
        votes = 0
        for t in stream:
            gamma = elect(self.trim(t))
            votes += int((gamma > 0).sum()) - int((gamma < 0).sum())
        self.majority = float((votes > 0) - (votes < 0))

    def trim(self, t: TaskTensors) -> list[torch.Tensor]:
        return [trim(tau, v) for tau, v in zip(t.taus, self.thresholds, strict=True)]

    def update(self, t: TaskTensors) -> torch.Tensor:
        trimmed = self.trim(t)
        gamma = elect(trimmed)
        return self.lam * disjoint_mean(trimmed, torch.where(gamma == 0, self.majority, gamma))
