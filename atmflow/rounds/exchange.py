"""Sending one message per task node and collecting the replies by task name.

A task whose node failed (an error reply, no reply within the timeout, or an invalid reply) is never
silently dropped: it is named in the log and the results, and the ``on-missing-task`` policy decides:
``fail`` raises :class:`TaskFailureError`, ``skip`` goes on without that task for this exchange.

Nothing a client sends is trusted. A reply is invalid when

* it claims another task than the one the handshake mapped to the node that answered (the task is
  bound to the node: a node cannot deliver, or overwrite, another task's update);
* a metric the server asked for is missing, not a number, or out of range (:data:`METRIC_RULES`:
  ``num-examples`` a finite count > 0, since ``aggregation = "examples"`` weighs task vectors by
  ``n_t / sum_s n_s``; ``accuracy``, F1 and ``dp-delta`` in [0, 1]; Matthews correlation in [-1, 1];
  losses finite; ``dp-epsilon`` and ``dp-noise-multiplier`` finite and >= 0, and required when
  ``privacy = "dp"``);
  any other metric it sends must be finite;
* its arrays do not fit the model (:func:`check_arrays`), or its transport spec announces tensors other
  than the model's (checked before anything is allocated, :func:`atmflow.transport.decode`).

A merged model is checked finite (:func:`require_finite`) before it is checkpointed or used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Protocol

import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol, transport
from atmflow.rounds.records import Scores

# The metrics each kind of reply must carry, and the range of every metric the server reads: key -> kind.
COUNT, FINITE, FRACTION, CORRELATION = "a finite count > 0", "finite", "in [0, 1]", "in [-1, 1]"
NONNEGATIVE = "finite and >= 0"
REQUIRED_METRICS = {
    MessageType.TRAIN: (protocol.NUM_EXAMPLES, protocol.TRAIN_LOSS),
    MessageType.EVALUATE: (protocol.ACCURACY, protocol.LOSS, protocol.NUM_EXAMPLES),
}
METRIC_RULES = {
    protocol.NUM_EXAMPLES: COUNT, protocol.TRAIN_LOSS: FINITE, protocol.ACCURACY: FRACTION, protocol.LOSS: FINITE,
    protocol.F1: FRACTION, protocol.MATTHEWS: CORRELATION, protocol.FINETUNED_ACCURACY: FRACTION,
    protocol.FINETUNED_LOSS: FINITE, protocol.FINETUNED_VALIDATION_ACCURACY: FRACTION,
    protocol.FINETUNED + protocol.F1: FRACTION,
    protocol.FINETUNED + protocol.MATTHEWS: CORRELATION,
    protocol.DP_EPSILON: NONNEGATIVE, protocol.DP_DELTA: FRACTION, protocol.DP_NOISE_MULTIPLIER: NONNEGATIVE,
}
RANGES = {COUNT: (0.0, math.inf), FINITE: (-math.inf, math.inf), FRACTION: (0.0, 1.0), CORRELATION: (-1.0, 1.0),
          NONNEGATIVE: (0.0, math.inf)}


class NonFiniteModelError(ValueError):
    """A merged (or loaded) model holds NaN or infinite values; it is never checkpointed or used."""


def require_finite(weights: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteModelError` naming the first tensor of ``weights`` with a NaN or inf."""
    for key, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteModelError(f"{what}: tensor {key!r} has non-finite values (NaN or inf); it is not "
                                      "saved or used. Check the task vectors and the merge parameters")


def metric_problem(key: str, value: object) -> str | None:
    """Why a metric value is unacceptable (not a number, non-finite, out of its range), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, list) and key not in METRIC_RULES:
            bad = [v for v in value if not math.isfinite(float(v))]
            return f"metric {key!r} has non-finite values" if bad else None
        return f"metric {key!r} is {type(value).__name__}, expected a number"
    rule = METRIC_RULES.get(key, FINITE)
    low, high = RANGES[rule]
    number = float(value)
    inside = low < number <= high if rule == COUNT else low <= number <= high
    if not math.isfinite(number) or not inside:
        return f"metric {key!r} = {number} is not {rule}"
    return None


def check_metrics(reply: Message, message_type: str, extra: Sequence[str] = ()) -> str | None:
    """Why a train or evaluate reply's metrics are invalid (missing, not numbers, out of range), or None.

    ``extra``: metrics the request asked for beyond its type's (e.g. the fine-tuned model's scores when
    a train message says evaluate-finetuned)."""
    required = (*REQUIRED_METRICS.get(message_type, ()), *extra)
    records = reply.content.metric_records
    if protocol.METRICS not in records:
        return f"no {protocol.METRICS!r} record (expected {list(required)})" if required else None
    metrics = records[protocol.METRICS]
    missing = [k for k in required if k not in metrics]
    if missing:
        return f"metric(s) {missing} missing"
    return next((p for k, v in metrics.items() if (p := metric_problem(k, v)) is not None), None)


class TaskFailureError(RuntimeError):
    """One or more tasks did not deliver a valid reply."""

    def __init__(self, phase: str, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        detail = "; ".join(f"{task}: {why}" for task, why in sorted(problems.items()))
        super().__init__(f"{phase}: no valid reply from task(s) {sorted(problems)} ({detail})")


def task_messages(node_tasks: Mapping[int, str], message_type: str,
                  build: Callable[[str], RecordDict]) -> list[Message]:
    """One message per task node, with content built for that node's task."""
    return [Message(content=build(task), dst_node_id=node, message_type=message_type)
            for node, task in node_tasks.items()]


class Replies:
    """The valid replies of one exchange by task, and why each other task has none."""

    def __init__(self, phase: str, valid: dict[str, Message], problems: dict[str, str]) -> None:
        self.phase, self.valid, self.problems = phase, valid, problems

    def enforce(self, policy: str) -> Replies:
        """Apply ``on-missing-task``: raise under "fail"; under "skip" log and go on (needs one valid reply)."""
        if self.problems and (policy == "fail" or not self.valid):
            raise TaskFailureError(self.phase, self.problems)
        for task, why in sorted(self.problems.items()):
            log(WARNING, "%s: skipping task %s (%s)", self.phase, task, why)
        return self


def reply_node(reply: Message, sent: Iterable[Message] = ()) -> int:
    """The node a reply answers for: the destination of the message it replies to, when that message is
    in ``sent``; else the reply's source node.

    A dead SuperNode's error reply (code 5, NODE_UNAVAILABLE) is written by the SuperLink and carries
    the SuperLink's id (1) as its source, so only ``reply_to_message_id`` names the node that failed.
    """
    by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    return by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def reply_problem(reply: Message, node: int, task: str, message_type: str | None,
                  extra: Sequence[str] = ()) -> str | None:
    """Why a (non-error) reply from ``node``, which holds ``task``, is invalid, or None."""
    claimed = protocol.reply_task(reply)
    if claimed is None:
        return f"invalid reply from node {node}: field {protocol.TASK!r} missing"
    if claimed != task:
        return (f"invalid reply from node {node}: field {protocol.TASK!r} claims task {claimed!r}, but the "
                f"handshake mapped this node to task {task!r}")
    problem = check_metrics(reply, message_type, extra) if message_type is not None else None
    return None if problem is None else f"invalid reply from node {node}: {problem}"


CLIENT_APP_MESSAGE = "occurred. Message:"  # flwr's ClientAppException: "Exception ... occurred. Message: <msg>"


def client_error(reason: str) -> str:
    """The ClientApp's own exception message in an error reply, without the wrapping around it.

    In a simulation the reason reads ``<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::
    ClientAppActor.run() ... Traceback ... Exception ClientAppException occurred. Message: <msg>'>``; in a
    deployment ``<class '...ClientAppException'>:<'... Message: <msg>'>``. Anything else is returned stripped.
    """
    text = reason.strip()
    if CLIENT_APP_MESSAGE in text:
        text = text.rsplit(CLIENT_APP_MESSAGE, 1)[1].strip()
        if text.endswith("'>"):
            text = text[:-2].rstrip()
    return text


def collect_replies(replies: Iterable[Message], node_tasks: Mapping[int, str], phase: str,
                    sent: Iterable[Message] = (), message_type: str | None = None,
                    required: Sequence[str] = ()) -> Replies:
    """Map replies to task names; list the tasks that failed, did not answer or sent an invalid reply.

    The task of a reply is the one the handshake mapped to the node that answered (``node_tasks``),
    never what the reply claims (:func:`reply_problem`). Pass the messages that were ``sent`` (after
    sending, when they carry their ids) so that error replies are mapped to the node they concern
    (see :func:`reply_node`), and the ``message_type`` asked so that the metrics are checked
    (:func:`check_metrics`; ``required`` names the metrics the request asked for beyond its type's).
    """
    sent = list(sent)
    valid: dict[str, Message] = {}
    problems: dict[str, str] = {}
    for reply in replies:
        node = reply_node(reply, sent)
        task = node_tasks.get(node)
        if reply.has_error():
            problems[task or f"node {node}"] = (f"error {reply.error.code} on node {node}: "
                                                f"{client_error(reply.error.reason)}")
        elif task is None:
            problems[f"node {node}"] = (f"reply from node {node}, which holds none of the tasks "
                                        f"{sorted(node_tasks.values())}")
        elif task not in problems and task not in valid:
            problem = reply_problem(reply, node, task, message_type, required)
            if problem is None:
                valid[task] = reply
            else:
                problems[task] = problem
    for task in node_tasks.values():
        if task not in valid and task not in problems:
            problems[task] = "no reply within the round timeout"
    return Replies(phase, valid, problems)


def send_to_tasks(grid: Grid, node_tasks: Mapping[int, str], message_type: str,
                  build: Callable[[str], RecordDict], timeout: float, phase: str,
                  required: Sequence[str] = ()) -> Replies:
    messages = task_messages(node_tasks, message_type, lambda task: protocol.with_phase(build(task), phase))
    replies = grid.send_and_receive(messages, timeout=timeout)
    return collect_replies(replies, node_tasks, phase, messages, message_type, required)


def check_arrays(arrays: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why a received task vector cannot be merged (keys, shapes, dtypes, non-finite values), or None."""
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        return f"wrong tensors (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in expected.items():
        value = arrays[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return f"tensor {key!r} is {value.dtype} {tuple(value.shape)}, expected {ref.dtype} {tuple(ref.shape)}"
        if not torch.isfinite(value).all():
            return f"tensor {key!r} has non-finite values"
    return None


def received_task_vector(reply: Message,
                         expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The task vector a train reply carries, decoded exactly as sent (:mod:`atmflow.transport`).

    With ``expected``, the transport spec must announce exactly these tensors with these shapes; this
    is checked before any tensor is allocated. Raises :class:`atmflow.transport.TransportError` when
    the arrays are missing or do not decode.
    """
    if protocol.ARRAYS not in reply.content.array_records:
        raise transport.TransportError(f"no {protocol.ARRAYS!r} record (the task vector) in the reply")
    shapes = None if expected is None else {k: tuple(v.shape) for k, v in expected.items()}
    arrays = reply.content.array_records[protocol.ARRAYS].to_torch_state_dict()
    return transport.decode(arrays, protocol.transport_spec(reply), shapes)


def evaluate_on_tasks(grid: Grid, node_tasks: Mapping[int, str], arrays: ArrayRecord, split: str,
                      timeout: float, phase: str, policy: str = "fail") -> Scores:
    """Each task node evaluates ``arrays`` on its own ``split``: ``{task: {accuracy, loss[, official metric]}}``
    (:func:`task_scores`)."""
    replies = send_to_tasks(grid, node_tasks, MessageType.EVALUATE,
                            lambda _: protocol.evaluate_request(arrays, split), timeout, phase).enforce(policy)
    return {task: task_scores(reply) for task, reply in sorted(replies.valid.items())}


def task_scores(reply: Message) -> dict[str, float]:
    """An evaluate reply's scores: ``{accuracy, loss}``, plus the task's official metric (e.g. ``matthews``
    for GLUE CoLA, ``f1`` for MRPC and QQP) when the reply carries one (:data:`atmflow.protocol.OFFICIAL_METRICS`)."""
    metrics = reply.content.metric_records[protocol.METRICS]
    official = {k: float(metrics[k]) for k in protocol.OFFICIAL_METRICS if k in metrics}
    return {"accuracy": float(metrics[protocol.ACCURACY]), "loss": float(metrics[protocol.LOSS]), **official}


class Evaluator(Protocol):
    """Scores of some weights on one split of every task: ``{task: {accuracy, loss}}``. ``phase`` names
    the evaluation in logs and errors. The one evaluation role: the lambda search, the conflict probe
    and the analyses take one."""

    def __call__(self, weights: Mapping[str, torch.Tensor], split: str, phase: str) -> Scores: ...


@dataclass
class GridEvaluator:
    """An :class:`Evaluator` that asks every task node (an evaluate message each; the node's own split)."""

    grid: Grid
    node_tasks: Mapping[int, str]
    timeout: float
    policy: str = "fail"

    def __call__(self, weights: Mapping[str, torch.Tensor], split: str, phase: str) -> Scores:
        return evaluate_on_tasks(self.grid, self.node_tasks, ArrayRecord(dict(weights)), split, self.timeout, phase,
                                 self.policy)


def array_bytes(arrays: ArrayRecord) -> int:
    """Payload size of an ArrayRecord: the bytes of its serialised arrays."""
    return sum(len(a.data) for a in arrays.values())
