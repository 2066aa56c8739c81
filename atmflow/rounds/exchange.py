"""Sending one message per task node and collecting the replies by task name.

A task whose node failed (an error reply, no reply within the timeout, or a reply whose arrays do
not fit the model) is never silently dropped: it is named in the log and the results, and the
``on-missing-task`` policy decides: ``fail`` raises :class:`TaskFailureError`, ``skip`` goes on
without that task for this exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Protocol

import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol, transport
from atmflow.rounds.records import Scores


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
                    sent: Iterable[Message] = ()) -> Replies:
    """Map replies to task names; list the tasks that failed or did not answer.

    Pass the messages that were ``sent`` (after sending, when they carry their ids) so that error
    replies are mapped to the node they concern (see :func:`reply_node`).
    """
    sent = list(sent)
    valid: dict[str, Message] = {}
    problems: dict[str, str] = {}
    for reply in replies:
        node = reply_node(reply, sent)
        task = protocol.reply_task(reply) or node_tasks.get(node)
        if reply.has_error():
            problems[task or f"node {node}"] = (f"error {reply.error.code} on node {node}: "
                                                f"{client_error(reply.error.reason)}")
        elif task is not None:
            valid[task] = reply
    for task in node_tasks.values():
        if task not in valid and task not in problems:
            problems[task] = "no reply within the round timeout"
    return Replies(phase, valid, problems)


def send_to_tasks(grid: Grid, node_tasks: Mapping[int, str], message_type: str,
                  build: Callable[[str], RecordDict], timeout: float, phase: str) -> Replies:
    messages = task_messages(node_tasks, message_type, lambda task: protocol.with_phase(build(task), phase))
    replies = grid.send_and_receive(messages, timeout=timeout)
    return collect_replies(replies, node_tasks, phase, messages)


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


def received_task_vector(reply: Message) -> dict[str, torch.Tensor]:
    """The task vector a train reply carries, decoded exactly as sent (:mod:`atmflow.transport`).

    Raises :class:`atmflow.transport.TransportError` when the arrays do not decode.
    """
    arrays = reply.content.array_records[protocol.ARRAYS].to_torch_state_dict()
    return transport.decode(arrays, protocol.transport_spec(reply))


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
