"""The strategy a plan calls for: one-shot merging or ATM."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from flwr.app import ArrayRecord

from atmflow.rounds.exchange import Evaluator
from atmflow.rounds.records import RoundRecord
from atmflow.strategies.atm import ATM
from atmflow.strategies.base import TaskVectorStrategy
from atmflow.strategies.oneshot import OneShot
from atmflow.strategies.plan import RunPlan


def build_strategy(plan: RunPlan, node_tasks: Mapping[int, str], expected: Mapping[str, torch.Tensor], *,
                   evaluator: Evaluator | None = None, first_round: int = 1,
                   on_round_end: Callable[[RoundRecord, ArrayRecord], None] | None = None) -> TaskVectorStrategy:
    """:class:`OneShot` (with ``evaluator`` for its lambda search) or :class:`ATM`, as ``plan`` says."""
    if plan.oneshot:
        return OneShot(node_tasks, plan, expected, evaluator=evaluator, first_round=first_round,
                       on_round_end=on_round_end)
    return ATM(node_tasks, plan, expected, first_round=first_round, on_round_end=on_round_end)
