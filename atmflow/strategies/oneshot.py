"""One-shot merging: one round; every task fine-tunes the pretrained model for the whole budget,
the server merges the task vectors once with the chosen operator (TA, TIES, Breadcrumbs, DARE,
TATR, TIES+TATR; see :mod:`atmflow.merging`).

Lambda selection as in the literature (Ilharco et al. 2023; paper 004, A.1, and its code): each value
of the grid (default {0, 0.05, ..., 1.0}, stretched by 1 / (1 - sparsity) for TaLoS task vectors) is
tried, every task node tests the merged model on its own *validation* split, and the value with the
best score is kept (ties: the smaller value). ``lambda-selection`` says which score:

* ``normalized`` (default; paper 004, A.1 and Eq. 11, and its code's ``avg_normalized_top1``): the mean
  over tasks of the merged model's validation accuracy divided by the task's own fine-tuned model's
  validation accuracy (``finetuned-validation-accuracy`` of the task's train reply);
* ``absolute``: the mean validation accuracy.

The whole curve is kept in the round's results (``extra.lambda_curve``).
"""

from __future__ import annotations

import math
from logging import INFO
from typing import Any

from flwr.common.logger import log

from atmflow import protocol
from atmflow.rounds.exchange import Evaluator
from atmflow.rounds.records import Scores, avg_accuracy, normalized_accuracy
from atmflow.strategies.base import RoundInputs, StateDict, TaskVectorStrategy


class OneShot(TaskVectorStrategy):
    """``evaluator`` scores a candidate merge on the task nodes' validation splits (needed when the plan
    has a lambda grid)."""

    def __init__(self, *args: Any, evaluator: Evaluator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lambda_grid = self.plan.lambda_grid
        if self.lambda_grid and evaluator is None:
            raise ValueError("choosing lambda on validation (a lambda grid) needs an evaluator")
        self.evaluator = evaluator

    def merge(self, base: StateDict, inputs: RoundInputs) -> StateDict:
        if not self.lambda_grid:
            return self.merge_step.apply(base, inputs.vectors, inputs.num_examples, inputs.grads or None,
                                         round_=inputs.round)
        assert self.evaluator is not None
        curve: dict[float, float] = {}
        best, best_model = 0.0, None
        for lam in sorted(self.lambda_grid):
            model = self.merge_step.apply(base, inputs.vectors, inputs.num_examples, inputs.grads or None,
                                          scale=lam, round_=inputs.round)
            scores = self.evaluator(model, "validation", f"lambda={lam:g} on validation")
            curve[lam] = self.selection_score(scores, inputs)
            if best_model is None or curve[lam] > curve[best]:
                best, best_model = lam, model
        log(INFO, "lambda on validation: %s -> %g", ", ".join(f"{k:g}: {v:.3f}" for k, v in curve.items()), best)
        self.note("lambda", best)
        self.note("lambda_curve", {f"{k:g}": v for k, v in curve.items()})
        return best_model

    def selection_score(self, scores: Scores, inputs: RoundInputs) -> float:
        """The score lambda is chosen by (see the module docstring) of one candidate's validation ``scores``."""
        if self.plan.lambda_selection == "absolute":
            return avg_accuracy(scores)
        finetuned = {t: {"accuracy": m[protocol.FINETUNED_VALIDATION_ACCURACY]} for t, m in inputs.train.items()}
        score = normalized_accuracy(scores, finetuned)
        if math.isnan(score):  # no task's fine-tuned model scores above 0 on its validation split
            raise ValueError("lambda-selection='normalized' divides by each task's fine-tuned validation accuracy, "
                             f"and every one is 0 ({finetuned}); use lambda-selection='absolute' or check the "
                             "fine-tuning (lr, budget-epochs)")
        return score
