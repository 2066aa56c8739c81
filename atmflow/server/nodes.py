"""The handshake that tells the server which node holds which task."""

from __future__ import annotations

import time
from logging import INFO

from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol
from atmflow.server.exchange import task_messages


def discover_task_nodes(grid: Grid, tasks: tuple[str, ...], wait_s: float, timeout: float) -> dict[int, str]:
    """Wait (at most ``wait_s``) for one node per task, ask each node its task, check the mapping.

    Raises ``RuntimeError`` when nodes are missing, two nodes claim one task, or a node holds a task
    that the run does not list.
    """
    deadline = time.monotonic() + wait_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < len(tasks) and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    if len(nodes) < len(tasks):
        raise RuntimeError(f"{len(nodes)} node(s) connected after {wait_s:.0f} s, but the run has "
                           f"{len(tasks)} tasks {list(tasks)}: start one SuperNode per task")
    messages = task_messages({node: "" for node in nodes}, protocol.DESCRIBE, lambda _: protocol.content())
    claimed: dict[str, list[int]] = {}
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error():
            raise RuntimeError(f"handshake: node {node} failed: {reply.error.reason}")
        claimed.setdefault(protocol.reply_task(reply) or "?", []).append(node)
    if silent := sorted(set(nodes) - answered):
        raise RuntimeError(f"handshake: node(s) {silent} did not answer within {timeout:.0f} s")
    twice = {t: n for t, n in claimed.items() if len(n) > 1}
    if twice:
        raise RuntimeError(f"several nodes claim the same task: {twice}")
    missing = [t for t in tasks if t not in claimed]
    if missing:
        raise RuntimeError(f"no node holds task(s) {missing}; nodes hold {sorted(claimed)}")
    node_tasks = {ids[0]: t for t, ids in claimed.items()}
    log(INFO, "Task nodes: %s", ", ".join(f"{t} -> node {n}" for n, t in node_tasks.items()))
    return node_tasks
