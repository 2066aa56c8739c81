"""PA-ATM (papers 000 and 001): Alternating Tuning and Merging from the pretrained model.

Each round every task fine-tunes the current base for ``epochs-per-round`` epochs; the server sets
``theta^(k+1) = theta^(k) + alpha / |T| * sum_t tau_t^(k)`` (paper 000, Eq. 5).
"""

from __future__ import annotations

from collections.abc import Mapping

from atmflow import protocol
from atmflow.merging import mean_merge
from atmflow.strategies.base import StateDict, TaskVectorStrategy


class PAATM(TaskVectorStrategy):
    def __init__(self, node_tasks: Mapping[int, str], instructions: protocol.TrainInstructions,
                 round_timeout: float, alpha: float = 1.0) -> None:
        super().__init__(node_tasks, instructions, round_timeout)
        self.alpha = alpha

    def merge(self, server_round: int, base: StateDict, vectors: Mapping[str, StateDict]) -> StateDict:
        return mean_merge(base, [vectors[t] for t in sorted(vectors)], self.alpha)
