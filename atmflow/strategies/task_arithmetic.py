"""One-shot Task Arithmetic (Ilharco et al., 2023): ``theta = theta_0 + lambda * sum_t tau_t``.

One round: every task fine-tunes the pretrained model for the whole budget. ``lambda`` is either
fixed (default 0.3) or chosen from a grid as the value with the best average *validation*
accuracy, each task node evaluating every candidate on its own validation split; the whole
curve is kept in the round's results (``extra.lambda_curve``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO

from flwr.app import ArrayRecord
from flwr.common.logger import log

from atmflow import protocol
from atmflow.merging import task_arithmetic
from atmflow.server.exchange import evaluate_on_tasks
from atmflow.server.results import avg_accuracy
from atmflow.strategies.base import StateDict, TaskVectorStrategy


class TaskArithmetic(TaskVectorStrategy):
    def __init__(self, node_tasks: Mapping[int, str], instructions: protocol.TrainInstructions,
                 round_timeout: float, lam: float = 0.3, lambda_grid: Sequence[float] = ()) -> None:
        super().__init__(node_tasks, instructions, round_timeout)
        self.lam = lam
        self.lambda_grid = tuple(lambda_grid)

    def merge(self, server_round: int, base: StateDict, vectors: Mapping[str, StateDict]) -> StateDict:
        ordered = [vectors[t] for t in sorted(vectors)]
        lam = self.select_lambda(base, ordered) if self.lambda_grid else self.lam
        self.note("lambda", lam)
        return task_arithmetic(base, ordered, lam)

    def select_lambda(self, base: StateDict, vectors: Sequence[StateDict]) -> float:
        """The grid value with the highest average validation accuracy (ties: the smaller lambda)."""
        assert self._grid is not None
        curve: dict[float, float] = {}
        for lam in self.lambda_grid:
            merged = ArrayRecord(task_arithmetic(base, vectors, lam))
            scores = evaluate_on_tasks(self._grid, self.node_tasks, merged, "validation", self.round_timeout,
                                       f"lambda={lam} validation")
            curve[lam] = avg_accuracy(scores)
        best = max(sorted(curve), key=lambda lam: curve[lam])
        log(INFO, "lambda on validation: %s -> %.2f", ", ".join(f"{k:g}: {v:.3f}" for k, v in curve.items()), best)
        self.note("lambda_curve", {str(k): v for k, v in curve.items()})
        return best
