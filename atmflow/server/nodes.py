"""The handshake that tells the server which node holds which task.

Flower's ``NodeInfo`` carries no node config, so the server asks: every connected node gets a
``query.describe`` message and answers with the task of its ``--node-config "task='...'"`` (in a
simulation, the task its ``partition-id`` indexes, or, with more or fewer nodes than tasks, the task
address it was asked for: :mod:`atmflow.server.routing`). The mapping must be one node per configured
task: two nodes claiming one task, a configured task that no node holds, or a node holding a task
the run does not list stop the run before any work, with a message saying what to start or stop.

With ``node-keys-file`` (a deployment), each claim is also checked against the key the operator gave
for that task (:mod:`atmflow.server.node_keys`): a node claiming a task whose key is not its own is
refused, following ``on-missing-task`` (``fail`` stops the run naming the task, the node and the
field; ``skip`` leaves the node out, and the run goes on if every task still has a node).

A node that does not answer (e.g. a SuperNode that was killed but whose heartbeat has not expired
yet, so the SuperLink still lists it) is left out with a warning when the answering nodes cover
every task; otherwise it is named in the error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO, WARNING

from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol
from atmflow.rounds.exchange import collect_replies, evaluate_on_tasks, reply_node, task_messages, task_scores
from atmflow.server.node_keys import HOW_TO_FIX, node_public_keys, refused_claims
from atmflow.server.routing import is_simulation

Claims = dict[str, list[int]]  # task -> the nodes that claim it


def wait_for_nodes(grid: Grid, count: int, wait_s: float) -> list[int]:
    """The connected node ids, once there are at least ``count`` (or ``wait_s`` has passed)."""
    deadline = time.monotonic() + wait_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < count and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    return nodes


def node_claims(replies: list[Message], sent: list[Message]) -> tuple[Claims, dict[int, str]]:
    """``({task: [node, ...]}, {silent or failed node: why})`` from the describe replies."""
    claimed: dict[str, list[int]] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        node = reply_node(reply, sent)
        if reply.has_error():
            failed[node] = f"error {reply.error.code}: {reply.error.reason.strip()}"
        else:
            claimed.setdefault(protocol.reply_task(reply) or "?", []).append(node)
    answered = {n for ids in claimed.values() for n in ids} | set(failed)
    failed.update({m.metadata.dst_node_id: "no answer within the timeout" for m in sent
                   if m.metadata.dst_node_id not in answered})
    return claimed, failed


def bind_claims(grid: Grid, claimed: Claims, failed: dict[int, str], bound: Mapping[str, bytes] | None,
                policy: str) -> tuple[Claims, dict[int, str]]:
    """The claims of nodes that hold their task's key in ``bound`` (``node-keys-file``; None: no binding).

    A refused node stops the handshake under ``on-missing-task = "fail"`` (a ``RuntimeError`` naming the
    task, the node and the field); under ``"skip"`` it joins ``failed`` and :func:`check_task_nodes` leaves
    it out, or names it when its task is then left without a node.
    """
    if bound is None:
        return claimed, failed
    refused = refused_claims(claimed, node_public_keys(grid.get_nodes()), bound)
    if refused and policy == "fail":
        detail = "; ".join(why for _, why in sorted(refused.items()))
        raise RuntimeError(f"handshake: refused {detail}. To fix: {HOW_TO_FIX} (on-missing-task = \"skip\" "
                           "leaves such nodes out)")
    kept = {task: [n for n in nodes if n not in refused] for task, nodes in claimed.items()}
    return ({task: nodes for task, nodes in kept.items() if nodes},
            {**failed, **{node: f"refused: {why}" for node, why in refused.items()}})


def check_task_nodes(tasks: tuple[str, ...], claimed: Claims, failed: dict[int, str]) -> dict[int, str]:
    """``{node: task}`` when exactly one node holds each configured task; else a clear ``RuntimeError``."""
    twice = {t: sorted(n) for t, n in claimed.items() if len(n) > 1}
    if twice:
        detail = "; ".join(f"task {t!r} is claimed by nodes {n}" for t, n in sorted(twice.items()))
        raise RuntimeError(f"handshake: several nodes claim the same task ({detail}). Each task's data must be "
                           "on exactly one SuperNode: stop the duplicate SuperNode or give it another "
                           "--node-config task")
    unknown = {t: sorted(n) for t, n in claimed.items() if t not in tasks}
    if unknown:
        detail = "; ".join(f"node(s) {n} hold task {t!r}" for t, n in sorted(unknown.items()))
        raise RuntimeError(f"handshake: {detail}, which the run does not list (tasks = {list(tasks)}). Stop that "
                           "SuperNode, fix its --node-config \"task='<name>'\", or add the task to the run's tasks")
    missing = [t for t in tasks if t not in claimed]
    if missing:
        errors = {n: why for n, why in failed.items() if why.startswith("error")}
        if errors:  # a node that raised (missing data or weights...) is the likely holder of the missing task
            detail = "; ".join(f"node {n}: {why}" for n, why in sorted(errors.items()))
            raise RuntimeError(f"handshake: node(s) failed while loading their task, so task(s) {missing} have "
                               f"no node: {detail}")
        why = f"; node(s) that did not answer or were refused: {failed}" if failed else ""
        raise RuntimeError(f"handshake: no node holds task(s) {missing} (nodes hold {sorted(claimed)}{why}). "
                           "Start one SuperNode per task with --node-config \"task='<name>'\"")
    for node, why in sorted(failed.items()):
        log(WARNING, "handshake: ignoring node %d (%s); every task has another node", node, why)
    return {ids[0]: t for t, ids in claimed.items()}


def _ask_nodes(grid: Grid, tasks: tuple[str, ...], wait_s: float, timeout: float, content: RecordDict,
               bound: Mapping[str, bytes] | None) -> tuple[list[Message], list[Message]]:
    if bound is not None and is_simulation(grid):
        raise RuntimeError("node-keys-file binds tasks to the public keys of a deployment's SuperNodes; the "
                           "nodes of a simulation have none: leave node-keys-file empty in a simulation")
    nodes = wait_for_nodes(grid, len(tasks), wait_s)
    if len(nodes) < len(tasks):
        raise RuntimeError(f"{len(nodes)} node(s) connected after {wait_s:.0f} s, but the run has "
                           f"{len(tasks)} tasks {list(tasks)}: start one SuperNode per task")
    sent = task_messages({node: "" for node in nodes}, protocol.DESCRIBE, lambda _: content)
    return sent, list(grid.send_and_receive(sent, timeout=timeout))


def _log_nodes(node_tasks: dict[int, str]) -> dict[int, str]:
    log(INFO, "Task nodes: %s", ", ".join(f"{t} -> node {n}" for n, t in node_tasks.items()))
    return node_tasks


def discover_task_nodes(grid: Grid, tasks: tuple[str, ...], wait_s: float, timeout: float,
                        bound: Mapping[str, bytes] | None = None, policy: str = "fail") -> dict[int, str]:
    """Wait (at most ``wait_s``) for one node per task, ask each node its task, check the mapping.

    Raises ``RuntimeError`` when too few nodes connect, two nodes claim one task, a configured task
    has no node, a node holds a task that the run does not list, or (with ``bound``, the task -> key
    binding of ``node-keys-file``) a node claims a task whose key it does not hold (see :func:`bind_claims`).
    """
    sent, replies = _ask_nodes(grid, tasks, wait_s, timeout, protocol.content(), bound)
    claimed, failed = bind_claims(grid, *node_claims(replies, sent), bound, policy)
    return _log_nodes(check_task_nodes(tasks, claimed, failed))


def discover_and_evaluate(grid: Grid, tasks: tuple[str, ...], wait_s: float, timeout: float, arrays: ArrayRecord,
                          split: str, phase: str, policy: str, bound: Mapping[str, bytes] | None = None
                          ) -> tuple[dict[int, str], dict[str, dict[str, float]]]:
    """The handshake and every task's evaluation of ``arrays`` in one exchange: ``(node -> task, scores)``.

    In a deployment each exchange costs seconds (a new ClientApp process per message), so a fresh
    run's handshake carries the pretrained weights. The scores are those of
    :func:`~atmflow.rounds.exchange.evaluate_on_tasks` (same client code), checked the same way (an
    invalid evaluate reply follows ``on-missing-task``). If a node fails and its
    task is left without an answer, this falls back to the two separate exchanges, so that the
    failure is named by task and handled by the ``on-missing-task`` policy exactly as without the
    shortcut. ``bound``: as for :func:`discover_task_nodes`.
    """
    sent, replies = _ask_nodes(grid, tasks, wait_s, timeout,
                               protocol.with_phase(protocol.evaluate_request(arrays, split), phase), bound)
    claimed, failed = node_claims(replies, sent)
    if failed and any(t not in claimed for t in tasks):
        log(WARNING, "handshake with %s: node(s) failed (%s); asking their tasks separately", phase, failed)
        node_tasks = discover_task_nodes(grid, tasks, wait_s, timeout, bound, policy)
        return node_tasks, evaluate_on_tasks(grid, node_tasks, arrays, split, timeout, phase, policy)
    node_tasks = _log_nodes(check_task_nodes(tasks, *bind_claims(grid, claimed, failed, bound, policy)))
    answered = collect_replies([r for r in replies if reply_node(r, sent) in node_tasks], node_tasks, phase, sent,
                               MessageType.EVALUATE).enforce(policy)
    return node_tasks, {task: task_scores(reply) for task, reply in sorted(answered.valid.items())}
