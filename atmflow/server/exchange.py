"""Sending one message per task node and collecting the replies by task name.

A task whose node failed (an error reply, or no reply within the timeout) is never silently
dropped: :class:`TaskFailureError` names every such task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from atmflow import protocol


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


def collect_replies(replies: Iterable[Message], node_tasks: Mapping[int, str], phase: str) -> dict[str, Message]:
    """Map replies to task names; raise :class:`TaskFailureError` for failed or missing tasks."""
    by_task: dict[str, Message] = {}
    problems: dict[str, str] = {}
    for reply in replies:
        task = protocol.reply_task(reply) or node_tasks.get(reply.metadata.src_node_id)
        if reply.has_error():
            problems[task or f"node {reply.metadata.src_node_id}"] = (
                f"error {reply.error.code}: {reply.error.reason}")
        elif task is not None:
            by_task[task] = reply
    for task in node_tasks.values():
        if task not in by_task and task not in problems:
            problems[task] = "no reply within the round timeout"
    if problems:
        raise TaskFailureError(phase, problems)
    return by_task


def send_to_tasks(grid: Grid, node_tasks: Mapping[int, str], message_type: str,
                  build: Callable[[str], RecordDict], timeout: float, phase: str) -> dict[str, Message]:
    replies = grid.send_and_receive(task_messages(node_tasks, message_type, build), timeout=timeout)
    return collect_replies(replies, node_tasks, phase)


def evaluation_content(arrays: ArrayRecord, split: str) -> RecordDict:
    return protocol.content(arrays=arrays, config=ConfigRecord({"split": split}))


def evaluate_on_tasks(grid: Grid, node_tasks: Mapping[int, str], arrays: ArrayRecord, split: str,
                      timeout: float, phase: str) -> dict[str, dict[str, float]]:
    """Each task node evaluates ``arrays`` on its own ``split``: ``{task: {accuracy, loss}}``."""
    replies = send_to_tasks(grid, node_tasks, MessageType.EVALUATE,
                            lambda _: evaluation_content(arrays, split), timeout, phase)
    return {task: task_scores(reply) for task, reply in replies.items()}


def task_scores(reply: Message) -> dict[str, float]:
    metrics = reply.content.metric_records[protocol.METRICS]
    return {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}


def array_bytes(arrays: ArrayRecord) -> int:
    """Payload size of an ArrayRecord: the bytes of its serialised arrays."""
    return sum(len(a.data) for a in arrays.values())
