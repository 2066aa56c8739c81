"""The merge step a strategy applies: an operator from :mod:`atmflow.merging` with its parameters.

Aggregation (``aggregation`` in the run config): ``uniform`` treats every task alike, as the
papers do; ``examples`` weights task t by its share of training examples, n_t / sum_s n_s, which
for the linear operators means scaling each task vector by T * n_t / sum_s n_s before merging
(the mean then becomes the example-weighted mean, FedAvg's rule).

Inside ATM (``mean_step``) every operator is applied as a mean over the tasks with scaling 1, as paper
000 does for all of them (Sec. 6.1: "we adopt mean aggregation of task vectors and use a scaling factor
of 1"): its scaling coefficient is :meth:`Rule.mean_scale` (``1 / n`` for the operators that sum the
task vectors, TA, Breadcrumbs, DARE and TATR; 1 for those that already average, mean and TIES), not the
operator's one-shot default (e.g. TA's 0.3 x sum, 2.4 times the mean step for 8 tasks). An explicit
``merge-lambda`` (in ``params``) is used as given.
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
    mean_step: bool = False

    def step_scale(self, n_tasks: int) -> float | None:
        """The scaling coefficient :meth:`apply` uses by default for ``n_tasks`` task vectors: the mean step's
        (``mean_step``, no explicit scale in ``params``), else None (``params`` or the rule's default)."""
        rule = get_rule(self.method)
        name = rule.scale_param()
        if not self.mean_step or name is None or name in self.params:
            return None
        return rule.mean_scale(n_tasks)

    @property
    def needs_gradients(self) -> bool:
        return get_rule(self.method).uses_grads

    def apply(self, base: Mapping[str, torch.Tensor], vectors: Mapping[str, StateDict],
              num_examples: Mapping[str, float], grads: Mapping[str, StateDict] | None = None,
              scale: float | None = None, round_: int = 1) -> StateDict:
        """Merge ``{task: tau}`` into ``base``; ``scale`` overrides the operator's lambda / alpha (default:
        :meth:`step_scale`).

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
        scale = self.step_scale(len(tasks)) if scale is None else scale
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
