"""Linear merge rules: Task Arithmetic and the ATM mean update."""

from __future__ import annotations

from dataclasses import dataclass

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskTensors, scale, total


@dataclass
class TaskArithmetic(Rule):
    """Task Arithmetic (Ilharco et al., 2023; baseline of paper 000): ``theta = theta_0 + lambda * sum_t tau_t``.

    Default ``lambda = 0.3`` (Ilharco et al.; they choose lambda on validation data, as one-shot runs
    do with ``lambda-grid``; paper 000's baselines use the mean of the task vectors with scaling 1,
    i.e. ``lambda = 1 / n``).
    """

    name = "ta"
    rank = 10
    linear = True
    sums_tasks = True
    lam: float = scale(0.3, "scaling lambda of the summed task vectors")

    def update(self, t: TaskTensors) -> torch.Tensor:
        return self.lam * total(t.taus)


@dataclass
class Mean(Rule):
    """ATM update (paper 000, Eq. 5): ``theta^(k+1) = theta^(k) + alpha / |T| * sum_t tau_t^(k)``.

    An unweighted mean over tasks (not FedAvg's weighting by number of examples); ``alpha = 1``
    as in paper 000.
    """

    name = "mean"
    rank = 0
    linear = True
    baseline = False  # the ATM step; as a one-shot method it is TA with lambda = 1 / n
    alpha: float = scale(1.0, "step size alpha of the mean task vector")

    def update(self, t: TaskTensors) -> torch.Tensor:
        return self.alpha / len(t.taus) * total(t.taus)
