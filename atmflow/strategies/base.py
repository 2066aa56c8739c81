"""Shared plumbing of every task-vector strategy (driven by Flower's ``Strategy.start`` loop).

Per round: send the current base to every task node (train); collect one task vector per task,
rejecting invalid replies (another task than the node's, missing or out-of-range metrics, arrays that
do not fit the model: wrong tensors, shapes, dtypes, NaN / inf; :mod:`atmflow.rounds.exchange`);
apply the ``on-missing-task`` policy; ``merge`` the task vectors into the next base (the
subclass's rule), checked finite (under ``privacy = "secagg"`` the train exchange is SecAgg+ and the server
gets only the mean of the task vectors, :mod:`atmflow.privacy.secagg`); then every task node tests the
merged model on its test split. Each round is
recorded as a :class:`RoundRecord` (scores, task-vector geometry, bytes, wall time) and handed to
``on_round_end`` (the experiment checkpoints there).
"""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from atmflow import protocol
from atmflow.merging.task_vectors import StateDict
from atmflow.privacy.secagg import SecureRound, secure_train_exchange
from atmflow.rounds.exchange import (
    Replies,
    array_bytes,
    check_arrays,
    collect_replies,
    received_task_vector,
    reply_node,
    require_finite,
    task_messages,
    task_scores,
)
from atmflow.rounds.geometry import task_vector_geometry
from atmflow.rounds.records import RoundRecord, avg_accuracy
from atmflow.strategies.plan import RunPlan
from atmflow.transport import TransportError


@dataclasses.dataclass
class RoundInputs:
    """What one round's replies delivered, by task (``train``: each reply's metrics)."""

    round: int
    vectors: dict[str, StateDict]
    grads: dict[str, StateDict]
    num_examples: dict[str, float]
    train: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class TaskVectorStrategy(Strategy):
    """Base class: subclasses implement :meth:`merge`.

    ``plan`` says what each round sends and how it merges (:class:`~atmflow.strategies.plan.RunPlan`).
    ``expected`` maps each fine-tuned tensor's name to a tensor of the right shape and dtype (the
    template a task vector must match). ``first_round`` numbers the rounds when resuming.
    """

    def __init__(self, node_tasks: Mapping[int, str], plan: RunPlan, expected: Mapping[str, torch.Tensor], *,
                 first_round: int = 1, on_round_end: Callable[[RoundRecord, ArrayRecord], None] | None = None) -> None:
        self.node_tasks = dict(node_tasks)
        self.plan = plan
        self.merge_step = plan.merge_step
        self.expected = dict(expected)
        self.policy = plan.policy
        self.first_round = first_round
        self.on_round_end = on_round_end
        self.history: list[RoundRecord] = []
        self._base: StateDict = {}
        self._started = 0.0
        self._pending: RoundRecord | None = None
        self._merged: ArrayRecord | None = None
        self._extra: dict[str, object] = {}
        self._sent: list[Message] = []  # the last exchange's messages: error replies map back through them
        self._secure: SecureRound | None = None  # a secure round's outcome, from configure_train to aggregate_train

    @abstractmethod
    def merge(self, base: StateDict, inputs: RoundInputs) -> StateDict:
        """The next base from the current base and one task vector per (delivering) task."""

    def absolute_round(self, server_round: int) -> int:
        return self.first_round + server_round - 1

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The round's train messages; under secure aggregation (``plan.secure``) the whole SecAgg+ exchange
        runs here, over ``grid``, and no further message is sent (its outcome waits for :meth:`aggregate_train`)."""
        self._started = time.perf_counter()
        self._base = arrays.to_torch_state_dict()
        round_ = self.absolute_round(server_round)
        instructions = self.plan.round(round_)
        phase = f"round {round_} train"

        def request(_: str) -> RecordDict:
            return protocol.with_phase(protocol.train_request(arrays, instructions), phase)

        if self.plan.secure is not None:
            self._secure = secure_train_exchange(grid, self.node_tasks, request, self.expected, self.plan.secure,
                                                 self.plan.round_timeout, phase, self.plan.required)
            return []
        self._sent = task_messages(self.node_tasks, MessageType.TRAIN, request)
        return self._sent

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = self.absolute_round(server_round)
        secure, self._secure = self._secure, None
        if secure is not None:
            collected, inputs, sizes = self._secure_inputs(round_, secure)
        else:
            collected, inputs, sizes = self._plain_inputs(round_, replies)
        train = {t: dict(r.content.metric_records[protocol.METRICS]) for t, r in sorted(collected.valid.items())}
        inputs.train = train
        inputs.num_examples = {t: m[protocol.NUM_EXAMPLES] for t, m in train.items()}
        collected.enforce(self.policy)
        # under secure aggregation the server sees only the sum: no single vector's norm or cosine
        geometry = {} if secure is not None else task_vector_geometry(inputs.vectors)
        merged = self.merge(self._base, inputs)
        require_finite(merged, f"round {round_}: the merged model ({self.merge_step.method})")
        self._pending = RoundRecord(
            round=round_, tasks={}, avg_accuracy=0.0, wall_s=0.0, bytes_up=sum(sizes.values()),
            bytes_up_per_task=sizes, train=train, geometry=geometry,
            missing=dict(collected.problems), extra={"merge": self.merge_step.method, **self._extra},
        )
        self._extra = {}
        mean_loss = sum(m[protocol.TRAIN_LOSS] for m in train.values()) / len(train)
        return ArrayRecord(merged), MetricRecord({protocol.TRAIN_LOSS: mean_loss})

    def _plain_inputs(self, round_: int, replies: Iterable[Message]) -> tuple[Replies, RoundInputs, dict[str, int]]:
        """The valid replies of a plain round with their task vectors (and gradient estimates), and the bytes of
        each task's arrays."""
        collected = collect_replies(replies, self.node_tasks, f"round {round_} train", self._sent, MessageType.TRAIN,
                                    self.plan.required)
        inputs = RoundInputs(round_, {}, {}, {})
        sizes: dict[str, int] = {}
        for task, reply in sorted(collected.valid.items()):
            records = reply.content.array_records
            try:
                vector = received_task_vector(reply, self.expected)
            except TransportError as err:
                collected.problems[task] = f"invalid reply from node {reply_node(reply, self._sent)}: {err}"
                continue
            grads = records[protocol.GRADS].to_torch_state_dict() if protocol.GRADS in records else {}
            problem = check_arrays(vector, self.expected)
            if problem is None and self.plan.instructions.tatr_exemplars:
                problem = check_arrays(grads, self.expected) if grads else "no gradient estimate in the reply"
            if problem is not None:
                collected.problems[task] = f"invalid reply from node {reply_node(reply, self._sent)}: {problem}"
                continue
            inputs.vectors[task] = vector
            if grads:
                inputs.grads[task] = grads
            sizes[task] = sum(array_bytes(r) for r in records.values())
        collected.valid = {t: r for t, r in collected.valid.items() if t in inputs.vectors}
        return collected, inputs, sizes

    @staticmethod
    def _secure_inputs(round_: int, secure: SecureRound) -> tuple[Replies, RoundInputs, dict[str, int]]:
        """A secure round's valid replies, and each delivering task's vector replaced by the secure mean
        ``m`` of them all: the merges allowed under secagg depend on the vectors only through their sum,
        which ``k`` copies of ``m`` reproduce (``sum_t m = k m = sum_t tau_t``; :mod:`atmflow.privacy.scope`).
        Bytes: what each node sent over SecAgg+'s four stages."""
        assert secure.mean is not None  # secure_train_exchange raises when it has no mean
        vectors = {task: secure.mean for task in secure.replies.valid}
        return secure.replies, RoundInputs(round_, vectors, {}, {}), secure.bytes_up

    def note(self, key: str, value: object) -> None:
        """Attach an extra result (e.g. a lambda-selection curve) to the current round's record."""
        self._extra[key] = value

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._merged = arrays
        phase = f"round {self.absolute_round(server_round)} evaluate"
        self._sent = task_messages(self.node_tasks, MessageType.EVALUATE,
                                   lambda _: protocol.with_phase(protocol.evaluate_request(arrays, "test"), phase))
        return self._sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        record = self._pending
        assert record is not None and self._merged is not None
        collected = collect_replies(replies, self.node_tasks, f"round {record.round} evaluate",
                                    self._sent, MessageType.EVALUATE).enforce(self.policy)
        record.tasks = {t: task_scores(r) for t, r in sorted(collected.valid.items())}
        record.avg_accuracy = avg_accuracy(record.tasks)
        record.wall_s = time.perf_counter() - self._started
        self.history.append(record)
        cosine = record.geometry.get("mean_abs_cosine")  # absent under secure aggregation: no single vector
        log(INFO, "round %d: average test accuracy %.3f (%s), mean |cos| %s, %.1f s, %.1f MB up", record.round,
            record.avg_accuracy, ", ".join(f"{t} {s['accuracy']:.3f}" for t, s in record.tasks.items()),
            "unknown (secure sum)" if cosine is None else f"{cosine:.3f}", record.wall_s, record.bytes_up / 1e6)
        if self.on_round_end is not None:
            self.on_round_end(record, self._merged)
        return MetricRecord({"avg-accuracy": record.avg_accuracy})

    def summary(self) -> None:
        log(INFO, "%s over tasks %s: merge %s %s, %d epoch(s) per round on the %s split", type(self).__name__,
            sorted(self.node_tasks.values()), self.merge_step.method, self.merge_step.params,
            self.plan.instructions.epochs, self.plan.instructions.split)
