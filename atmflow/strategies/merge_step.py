"""The merge step a strategy applies: an operator from :mod:`atmflow.merging` with its parameters.

Aggregation (``aggregation`` in the run config): ``uniform`` treats every task alike, as the
papers do; ``examples`` weights task t by its share of training examples, n_t / sum_s n_s, which
for the linear operators means scaling each task vector by T * n_t / sum_s n_s before merging
(the mean then becomes the example-weighted mean, FedAvg's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from atmflow.config import RunConfig
from atmflow.merging import merge

StateDict = dict[str, torch.Tensor]


def operator_params(cfg: RunConfig) -> dict[str, float | int]:
    """The run config's parameters for its merge operator (names as in :mod:`atmflow.merging`)."""
    method = cfg.merge_method
    params: dict[str, float | int] = {}
    if cfg.merge_lambda:
        params[scale_param(method)] = cfg.merge_lambda
    if "ties" in method:
        params["k"] = cfg.ties_k
    if method == "breadcrumbs":
        params.update(beta=cfg.breadcrumbs_beta, gamma=cfg.breadcrumbs_gamma)
    if method == "dare":
        params.update(p=cfg.dare_p, seed=cfg.merge_seed)
    if "tatr" in method:
        params["trust_fraction"] = cfg.tatr_trust_fraction
    return params


def scale_param(method: str) -> str:
    """The name of the operator's scaling coefficient: alpha for the mean, lambda for the others."""
    return "alpha" if method == "mean" else "lam"


@dataclass(frozen=True)
class MergeStep:
    method: str
    params: dict[str, float | int] = field(default_factory=dict)
    aggregation: str = "uniform"

    @property
    def needs_gradients(self) -> bool:
        return "tatr" in self.method

    def apply(self, base: Mapping[str, torch.Tensor], vectors: Mapping[str, StateDict],
              num_examples: Mapping[str, float], grads: Mapping[str, StateDict] | None = None,
              scale: float | None = None, round_: int = 1) -> StateDict:
        """Merge ``{task: tau}`` into ``base``; ``scale`` overrides the operator's lambda / alpha.

        A random operator (DARE) draws fresh masks each round: its seed is ``merge-seed + round - 1``
        (with one seed for every round, ATM would drop the same entries in every iteration).
        """
        tasks = sorted(vectors)
        taus = [vectors[t] for t in tasks]
        if self.aggregation == "examples":
            total = sum(num_examples[t] for t in tasks)
            taus = [{k: v * (len(tasks) * num_examples[t] / total) for k, v in tau.items()}
                    for t, tau in zip(tasks, taus, strict=True)]
        params = dict(self.params)
        if scale is not None:
            params[scale_param(self.method)] = scale
        if "seed" in params:
            params["seed"] = int(params["seed"]) + max(round_ - 1, 0)
        task_grads = [grads[t] for t in tasks] if grads and self.needs_gradients else None
        return merge(self.method, base, taus, grads=task_grads, **params)
