"""Shared plumbing of every task-vector strategy (driven by Flower's ``Strategy.start`` loop).

Per round: send the current base to every task node (train), collect one task vector per task,
``merge`` them into the next base (the subclass's rule), then every task node evaluates the merged
model on its test split. Each round is recorded as a :class:`RoundRecord`.
"""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from atmflow import protocol
from atmflow.server.exchange import (
    array_bytes,
    collect_replies,
    evaluation_content,
    task_messages,
    task_scores,
)
from atmflow.server.results import RoundRecord, avg_accuracy

StateDict = dict[str, torch.Tensor]


class TaskVectorStrategy(Strategy):
    """Base class: subclasses implement :meth:`merge` (and say how many epochs a round trains)."""

    def __init__(self, node_tasks: Mapping[int, str], instructions: protocol.TrainInstructions,
                 round_timeout: float) -> None:
        self.node_tasks = dict(node_tasks)
        self.instructions = instructions
        self.round_timeout = round_timeout
        self.history: list[RoundRecord] = []
        self._grid: Grid | None = None
        self._base: StateDict = {}
        self._started = 0.0
        self._pending: dict[str, object] = {}

    @abstractmethod
    def merge(self, server_round: int, base: StateDict, vectors: Mapping[str, StateDict]) -> StateDict:
        """The next base from the current base and one task vector per task."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._grid, self._started = grid, time.perf_counter()
        self._base = arrays.to_torch_state_dict()
        how = dataclasses.replace(self.instructions, seed=self.instructions.seed * 100_003 + server_round)
        return task_messages(self.node_tasks, MessageType.TRAIN,
                             lambda _: protocol.content(arrays=arrays, config=how.to_record()))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        by_task = collect_replies(replies, self.node_tasks, f"round {server_round} train")
        records = {t: r.content.array_records[protocol.ARRAYS] for t, r in by_task.items()}
        vectors = {t: rec.to_torch_state_dict() for t, rec in records.items()}
        train = {t: dict(r.content.metric_records[protocol.METRICS]) for t, r in by_task.items()}
        self._pending = {"bytes_up_per_task": {t: array_bytes(rec) for t, rec in records.items()},
                         "train": train, "extra": {}}
        merged = self.merge(server_round, self._base, vectors)
        mean_loss = sum(m["train-loss"] for m in train.values()) / len(train)
        return ArrayRecord(merged), MetricRecord({"train-loss": mean_loss})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return task_messages(self.node_tasks, MessageType.EVALUATE, lambda _: evaluation_content(arrays, "test"))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        by_task = collect_replies(replies, self.node_tasks, f"round {server_round} evaluate")
        scores = {t: task_scores(r) for t, r in sorted(by_task.items())}
        per_task = self._pending["bytes_up_per_task"]
        assert isinstance(per_task, dict)
        record = RoundRecord(
            round=server_round, tasks=scores, avg_accuracy=avg_accuracy(scores),
            wall_s=time.perf_counter() - self._started, bytes_up=sum(per_task.values()),
            bytes_up_per_task=per_task, train=self._pending["train"],  # type: ignore[arg-type]
            extra=self._pending["extra"],  # type: ignore[arg-type]
        )
        self.history.append(record)
        log(INFO, "round %d: average test accuracy %.3f (%s), %.1f s, %.1f MB up", server_round,
            record.avg_accuracy, ", ".join(f"{t} {s['accuracy']:.3f}" for t, s in scores.items()),
            record.wall_s, record.bytes_up / 1e6)
        return MetricRecord({"avg-accuracy": record.avg_accuracy})

    def note(self, key: str, value: object) -> None:
        """Attach an extra result (e.g. a lambda-selection curve) to the current round's record."""
        extra = self._pending["extra"]
        assert isinstance(extra, dict)
        extra[key] = value

    def summary(self) -> None:
        log(INFO, "%s over tasks %s; %d epoch(s) per round", type(self).__name__,
            sorted(self.node_tasks.values()), self.instructions.epochs)
