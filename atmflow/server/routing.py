"""A simulation with fewer (or more) SuperNodes than tasks: the server addresses tasks, not nodes.

Flower's default local federation has 2 simulated SuperNodes, the default run 4 tasks. In a simulation
every node can load every task (they share the machine and the run config), so with ``n`` nodes and ``T``
tasks the ``k``-th node (node ids in ascending order) serves the tasks ``k, k + n, k + 2n, ...`` of the
run's ``tasks`` list (with ``n > T``, the nodes after the ``T``-th stay idle).

:class:`TaskRoutingGrid` wraps the simulation's grid so that the rest of the server is unchanged: it
lists one *task address* per task (:data:`ADDRESS_BASE` + the task's index) instead of the node ids, and
delivers a message sent to an address to the node serving that task, asking it to answer for the task
(``serve`` record, :func:`atmflow.protocol.for_task`). The handshake, the per-task exchanges and their
checks (a reply must come from the address its task is mapped to) work on the addresses as on nodes.
Each task is still fine-tuned and evaluated with its own seeds, so the results equal those with one
node per task. A deployment is never routed: there each SuperNode holds the one task of its node config.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from atmflow import protocol

ADDRESS_BASE = 1000  # task i is addressed as node ADDRESS_BASE + i (the simulation's node ids are larger)
SIMULATION_START_S = 10.0  # a simulation registers all its nodes at once, at most this long after the ServerApp starts


def is_simulation(grid: Grid) -> bool:
    """Flower's simulation runtime hands the ServerApp an ``InMemoryGrid`` (a deployment: a grid backed by a
    SuperLink); :class:`atmflow.sim.inprocess.InProcessGrid` says it simulates with ``simulation = True``."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid) or bool(getattr(grid, "simulation", False))


def simulation_nodes(grid: Grid) -> list[int]:
    """The simulation's node ids (it registers them just after starting the ServerApp; waits at most
    :data:`SIMULATION_START_S`)."""
    deadline = time.monotonic() + SIMULATION_START_S
    nodes = sorted(grid.get_node_ids())
    while not nodes and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise RuntimeError(f"the simulation registered no SuperNode within {SIMULATION_START_S:.0f} s; check the "
                           "federation's options.num-supernodes")
    return nodes


class TaskRoutingGrid(Grid):
    """The simulation's grid with one address per task (see module docstring)."""

    simulation = True

    def __init__(self, grid: Grid, tasks: tuple[str, ...], nodes: list[int]) -> None:
        self.grid = grid
        self.routes = {ADDRESS_BASE + i: (nodes[i % len(nodes)], task) for i, task in enumerate(tasks)}

    @property
    def run(self) -> Run:
        return self.grid.run

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.routes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("TaskRoutingGrid maps replies back to task addresses: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("TaskRoutingGrid maps replies back to task addresses: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send each message to the node serving its address's task; after sending, each message carries the id
        of what was sent for it, so that replies map back to its address
        (:func:`atmflow.rounds.exchange.reply_node`)."""
        messages = list(messages)
        routed = []
        for message in messages:
            address = message.metadata.dst_node_id
            if address not in self.routes:
                raise ValueError(f"no task has address {address}; addresses: {sorted(self.routes)}")
            node, task = self.routes[address]
            routed.append(Message(content=protocol.for_task(message.content, task), dst_node_id=node,
                                  message_type=message.metadata.message_type, group_id=message.metadata.group_id))
        replies = list(self.grid.send_and_receive(routed, timeout=timeout))
        for message, sent in zip(messages, routed, strict=True):
            message.metadata.__dict__["_message_id"] = sent.metadata.message_id  # as Flower's grids set it
        return replies


def task_grid(grid: Grid, tasks: tuple[str, ...], *, one_node_per_task: str | None = None) -> Grid:
    """``grid`` itself in a deployment or a simulation with one node per task; else a :class:`TaskRoutingGrid`
    (unless ``one_node_per_task`` gives the reason the run needs one SuperNode per task: then it fails at once)."""
    if not is_simulation(grid):
        return grid
    nodes = simulation_nodes(grid)
    if len(nodes) == len(tasks):
        return grid
    if one_node_per_task is not None:
        raise RuntimeError(
            f"the simulation has {len(nodes)} SuperNode(s) but the run has {len(tasks)} tasks {list(tasks)}, and "
            f"{one_node_per_task}. Run it with: flwr run . --federation-config \"num-supernodes={len(tasks)}\"")
    routing = TaskRoutingGrid(grid, tasks, nodes)
    served = {node: [t for n, t in routing.routes.values() if n == node] for node in nodes}
    log(INFO, "the simulation has %d SuperNode(s) for %d tasks; each serves several: %s", len(nodes), len(tasks),
        "; ".join(f"node {n}: {', '.join(t) or 'none'}" for n, t in served.items()))
    return routing
