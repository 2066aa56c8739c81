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

from atmflow.merging import merge
from atmflow.merging.registry import get_rule
from atmflow.merging.task_vectors import StateDict


@dataclass(frozen=True)
class MergeStep:
    method: str
    params: dict[str, float | int] = field(default_factory=dict)
    aggregation: str = "uniform"

    @property
    def needs_gradients(self) -> bool:
        return get_rule(self.method).uses_grads

    def apply(self, base: Mapping[str, torch.Tensor], vectors: Mapping[str, StateDict],
              num_examples: Mapping[str, float], grads: Mapping[str, StateDict] | None = None,
              scale: float | None = None, round_: int = 1) -> StateDict:
        """Merge ``{task: tau}`` into ``base``; ``scale`` overrides the operator's lambda / alpha.

        A random operator (DARE) draws fresh masks each round: its seed parameter is advanced to
        ``seed + round - 1`` (with one seed for every round, ATM would drop the same entries in every
        iteration).
        """
        tasks = sorted(vectors)
        taus = [vectors[t] for t in tasks]
        if self.aggregation == "examples":
            total = sum(num_examples[t] for t in tasks)
            taus = [{k: v * (len(tasks) * num_examples[t] / total) for k, v in tau.items()}
                    for t, tau in zip(tasks, taus, strict=True)]
        rule = get_rule(self.method)
        params = dict(self.params)
        if scale is not None:
            name = rule.scale_param()
            if name is None:
                raise ValueError(f"merge method {self.method!r} has no scaling coefficient to choose")
            params[name] = scale
        for p in rule.params():
            if p.seed and p.name in params:
                params[p.name] = int(params[p.name]) + max(round_ - 1, 0)
        task_grads = [grads[t] for t in tasks] if grads and self.needs_gradients else None
        return merge(self.method, base, taus, grads=task_grads, **params)
