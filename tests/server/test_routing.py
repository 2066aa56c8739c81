"""A simulation with fewer SuperNodes than tasks (Flower's default local federation has 2): each node serves
several tasks through task addresses, with the same results as one node per task; a deployment's node still
answers for its own task only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from server.test_determinism import assert_same_run

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.client.app import node_task
from atmflow.config import load_config
from atmflow.server.experiment import run_experiment
from atmflow.server.routing import ADDRESS_BASE, TaskRoutingGrid, task_grid
from atmflow.sim.inprocess import InProcessGrid


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # set by the runtime in a real run


class TwoNodeSimulation(InMemoryGrid):
    """Flower's default local federation as the ServerApp sees it: 2 simulated SuperNodes."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [7, 3]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        self.sent = list(messages)
        for i, m in enumerate(self.sent):
            m.metadata.__dict__["_message_id"] = f"id{i}"
        return []


def test_two_nodes_serve_four_tasks_by_address() -> None:
    inner = TwoNodeSimulation()
    grid = task_grid(inner, ("a", "b", "c", "d"))
    assert isinstance(grid, TaskRoutingGrid)
    assert list(grid.get_node_ids()) == [ADDRESS_BASE + i for i in range(4)]
    shared = protocol.content(config=ConfigRecord({"x": 1}))  # one content for every message, as the handshake
    out = [Message(content=shared, dst_node_id=a, message_type=MessageType.QUERY) for a in grid.get_node_ids()]
    grid.send_and_receive(out, timeout=1.0)
    assert [(m.metadata.dst_node_id, protocol.requested_task(m)) for m in inner.sent] == [
        (3, "a"), (7, "b"), (3, "c"), (7, "d")]
    assert [m.metadata.message_id for m in out] == ["id0", "id1", "id2", "id3"]  # replies map back to addresses
    assert protocol.SERVE not in shared.config_records


def test_a_run_that_needs_one_node_per_task_fails_at_once_naming_the_federation_config() -> None:
    with pytest.raises(RuntimeError, match=r"has 2 SuperNode\(s\) but the run has 4 tasks.*privacy='secagg' needs one "
                                           r'SuperNode per task.*--federation-config "num-supernodes=4"'):
        task_grid(TwoNodeSimulation(), ("a", "b", "c", "d"), one_node_per_task="privacy='secagg' needs one SuperNode "
                                                                              "per task")


def test_one_node_per_task_and_deployments_are_not_routed() -> None:
    inner = TwoNodeSimulation()
    assert task_grid(inner, ("a", "b")) is inner
    deployment = InProcessGrid(client_app, load_config({}).to_run_config(), 2)
    deployment.simulation = False
    assert task_grid(deployment, ("a", "b", "c")) is deployment


def test_a_deployment_node_answers_for_its_own_task_only() -> None:
    cfg = load_config({"tasks": "mnist,digits"})
    context = Context(run_id=1, node_id=5, node_config={"task": "mnist"}, state=RecordDict(), run_config={})
    asked = Message(content=protocol.for_task(protocol.content(), "digits"), dst_node_id=5,
                    message_type=MessageType.QUERY)
    with pytest.raises(ValueError, match="holds task 'mnist'.*asked for task 'digits'"):
        node_task(context, cfg, asked)
    simulated = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 1},
                        state=RecordDict(), run_config={})
    assert node_task(simulated, cfg, asked) == "digits"


def test_two_nodes_for_three_tasks_give_the_results_of_three_nodes(tiny: dict[str, Any], tmp_path: Path) -> None:
    small = {**tiny, "tasks": "digits,mnist,animal-mnist", "train-size": 60, "rounds": 1, "individual": False,
             "num-threads": 1, "run-name": "r"}
    outs = []
    for nodes in (2, 3):
        cfg = load_config({**small, "output-dir": str(tmp_path / f"{nodes}-nodes")})
        run_experiment(task_grid(InProcessGrid(client_app, cfg.to_run_config(), nodes), cfg.tasks), cfg)
        outs.append(tmp_path / f"{nodes}-nodes" / "r")
    assert_same_run(*outs)
