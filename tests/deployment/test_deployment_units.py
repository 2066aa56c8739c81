"""Deployment logic without processes: which node a reply concerns, the task handshake's checks, the
handshake that also evaluates the pretrained model (one exchange fewer), a node's data path, and the
certificates script."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.client.app import node_data
from atmflow.config import load_config
from atmflow.data.tasks import data_location
from atmflow.deploy.loopback import GENERATE_CERTS, LOST, LoopbackDeployment, RunUnknownError, generate_certificates
from atmflow.models.mobilenet import pretrained_encoder
from atmflow.rounds.exchange import (
    TaskFailureError,
    collect_replies,
    evaluate_on_tasks,
    reply_node,
    task_messages,
)
from atmflow.server.experiment import run_experiment
from atmflow.server.nodes import check_task_nodes, discover_and_evaluate, discover_task_nodes, node_claims
from atmflow.sim.inprocess import InProcessGrid

SUPERLINK_NODE_ID = 1  # the source id of error replies written by the SuperLink itself
NODE_UNAVAILABLE = 5


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def _sent(node_tasks: dict[int, str], message_type: str = MessageType.TRAIN) -> list[Message]:
    messages = task_messages(node_tasks, message_type, lambda _: protocol.content())
    for i, message in enumerate(messages):  # what the Grid does when it pushes them
        message.metadata.__dict__["_message_id"] = f"sent-{i}"
    return messages


def _reply(to: Message, src: int, task: str | None = None, error: Error | None = None) -> Message:
    if error is not None:
        reply = Message(error=error, reply_to=to)
    else:
        reply = Message(content=protocol.content(task=protocol.task_record(task or "")), reply_to=to)
    reply.metadata.__dict__["_src_node_id"] = src
    return reply


def test_a_dead_nodes_error_reply_is_mapped_to_its_task_through_the_message_it_answers() -> None:
    node_tasks = {11: "mnist", 22: "digits"}
    sent = _sent(node_tasks)
    unavailable = Error(code=NODE_UNAVAILABLE, reason="Node 22 was offline for 60 s")
    replies = [_reply(sent[0], 11, "mnist"), _reply(sent[1], SUPERLINK_NODE_ID, error=unavailable)]
    assert reply_node(replies[1], sent) == 22
    collected = collect_replies(replies, node_tasks, "round 2 train", sent)
    assert set(collected.valid) == {"mnist"}
    assert collected.problems == {"digits": "error 5 on node 22: Node 22 was offline for 60 s"}  # not "node 1"
    with pytest.raises(TaskFailureError, match=r"round 2 train.*\['digits'\]"):
        collected.enforce("fail")
    # without the sent messages the reply can only be named by its (misleading) source
    assert set(collect_replies(replies, node_tasks, "x").problems) == {"node 1", "digits"}


def test_handshake_refuses_two_nodes_with_one_task() -> None:
    sent = _sent({11: "", 22: "", 33: ""}, protocol.DESCRIBE)
    replies = [_reply(sent[0], 11, "mnist"), _reply(sent[1], 22, "mnist"), _reply(sent[2], 33, "digits")]
    with pytest.raises(RuntimeError, match=r"task 'mnist' is claimed by nodes \[11, 22\]"):
        check_task_nodes(("mnist", "digits"), *node_claims(replies, sent))


def test_handshake_refuses_a_configured_task_without_a_node() -> None:
    sent = _sent({11: "", 22: ""}, protocol.DESCRIBE)
    replies = [_reply(sent[0], 11, "mnist"), _reply(sent[1], 22, "fashion-mnist")]
    with pytest.raises(RuntimeError, match=r"no node holds task\(s\) \['digits'\]"):
        check_task_nodes(("mnist", "digits", "fashion-mnist"), *node_claims(replies, sent))
    with pytest.raises(RuntimeError, match=r"node\(s\) \[22\] hold task 'fashion-mnist', which the run does not list"):
        check_task_nodes(("mnist",), *node_claims(replies, sent))


def test_handshake_leaves_out_a_dead_node_when_every_task_has_a_live_one() -> None:
    sent = _sent({11: "", 22: "", 33: ""}, protocol.DESCRIBE)
    dead = Error(code=NODE_UNAVAILABLE, reason="offline")
    replies = [_reply(sent[0], 11, "mnist"), _reply(sent[1], SUPERLINK_NODE_ID, error=dead),
               _reply(sent[2], 33, "digits")]
    assert check_task_nodes(("mnist", "digits"), *node_claims(replies, sent)) == {11: "mnist", 33: "digits"}
    claimed, failed = node_claims(replies[:1], sent)  # 22 and 33 silent
    assert failed == {22: "no answer within the timeout", 33: "no answer within the timeout"}
    with pytest.raises(RuntimeError, match=r"no node holds task\(s\) \['digits'\].*did not answer"):
        check_task_nodes(("mnist", "digits"), claimed, failed)


def _context(node_config: dict[str, str]) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_a_nodes_data_path_replaces_the_task_folder_and_is_refused_where_no_folder_is_read() -> None:
    cfg = load_config({})
    assert node_data(_context({"task": "fashion-mnist"}), cfg, "fashion-mnist") is cfg
    for key in ("data-path", "dataset-path"):
        moved = node_data(_context({"task": "fashion-mnist", key: "/data/fm"}), cfg, "fashion-mnist")
        assert data_location("fashion-mnist", moved).source == "/data/fm"
        assert data_location("fashion-mnist", cfg).source != "/data/fm"
    cars = node_data(_context({"task": "cars", "dataset-path": "/data/cars"}), cfg, "cars")
    assert data_location("cars", cars).source == "/data/cars"
    with pytest.raises(ValueError, match="task 'mnist' reads its data from an installed Python package"):
        node_data(_context({"task": "mnist", "data-path": "/data"}), cfg, "mnist")
    with pytest.raises(ValueError, match="both dataset-path and data-path"):
        node_data(_context({"task": "cars", "data-path": "/a", "dataset-path": "/b"}), cfg, "cars")


def test_supernode_authentication_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        LoopbackDeployment(tmp_path, ("mnist",), auth=True)


def test_certificate_script_makes_a_server_certificate_the_ca_verifies(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path / "certs", ("mnist",))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.crt")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.crt"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:superlink" in text
    assert (certs / "node-mnist").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (certs / "node-mnist.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    bad = subprocess.run(["sh", str(GENERATE_CERTS), "--bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr


class CountingGrid(InProcessGrid):
    """The in-process grid, counting exchanges (``send_and_receive`` calls) by message type."""

    def __init__(self, *args: Any, fail_describe: str = "") -> None:
        super().__init__(*args)
        self.exchanges: list[str] = []
        self.fail_describe = fail_describe

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        kind = messages[0].metadata.message_type
        self.exchanges.append(kind + ("+arrays" if protocol.ARRAYS in messages[0].content.array_records else ""))
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if self.fail_describe and self.exchanges[-1] == protocol.DESCRIBE + "+arrays":
            replies = [Message(error=Error(code=2, reason=self.fail_describe), reply_to=m) if i == 0 else r
                       for i, (m, r) in enumerate(zip(messages, replies, strict=True))]
        return replies


def test_a_fresh_run_evaluates_the_pretrained_model_in_the_handshake(tiny: dict[str, Any]) -> None:
    cfg = load_config({**tiny, "run-name": "count", "rounds": 2, "individual": False, "tasks": "digits,mnist"})
    grid = CountingGrid(client_app, cfg.to_run_config(), len(cfg.tasks))
    results = run_experiment(grid, cfg)
    train, evaluate = MessageType.TRAIN + "+arrays", MessageType.EVALUATE + "+arrays"
    assert grid.exchanges == [protocol.DESCRIBE + "+arrays", train, evaluate, train, evaluate]
    pretrained = ArrayRecord(pretrained_encoder().state_dict())
    separate = evaluate_on_tasks(grid, {100: "digits", 101: "mnist"}, pretrained, "test", 60.0, "check")
    assert results.pretrained == separate  # the same scores as the separate evaluation exchange


def test_a_node_failing_in_the_combined_handshake_falls_back_to_separate_exchanges(tiny: dict[str, Any]) -> None:
    cfg = load_config({**tiny, "tasks": "digits,mnist"})
    grid = CountingGrid(client_app, cfg.to_run_config(), len(cfg.tasks), fail_describe="disk on fire")
    pretrained = ArrayRecord(pretrained_encoder().state_dict())
    node_tasks, scores = discover_and_evaluate(grid, cfg.tasks, 5.0, 60.0, pretrained, "test", "pretrained", "fail")
    assert node_tasks == {100: "digits", 101: "mnist"} and sorted(scores) == ["digits", "mnist"]
    assert grid.exchanges == [protocol.DESCRIBE + "+arrays", protocol.DESCRIBE, MessageType.EVALUATE + "+arrays"]


@pytest.mark.parametrize("with_weights", [False, True])
def test_a_node_holding_a_task_the_run_does_not_list_stops_the_handshake(tiny: dict[str, Any],
                                                                           with_weights: bool) -> None:
    """The real client's reply (through the in-process grid): the node names its task, and the server refuses
    the run naming the node and the task, even though every listed task has a node."""
    cfg = load_config({**tiny, "tasks": "mnist,digits"})
    grid = InProcessGrid(client_app, cfg.to_run_config(), 3)
    for node, task in zip(sorted(grid.contexts), ["mnist", "digits", "fashion-mnist"], strict=True):
        grid.contexts[node].node_config = {"task": task}
    match = r"node\(s\) \[102\] hold task 'fashion-mnist', which the run does not list"
    with pytest.raises(RuntimeError, match=match):
        if with_weights:  # a fresh run's handshake (carries the pretrained weights)
            discover_and_evaluate(grid, cfg.tasks, 1.0, 60.0, ArrayRecord(pretrained_encoder().state_dict()), "test",
                                  "pretrained evaluation", "fail")
        else:
            discover_task_nodes(grid, cfg.tasks, 1.0, 60.0)


def test_a_run_the_superlink_no_longer_knows_is_reported_with_what_to_do(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted SuperLink (state in memory) answers ``flwr ls`` without the run: a message, not a traceback."""
    deployment = LoopbackDeployment(tmp_path, ("digits",))
    answer = subprocess.CompletedProcess(["flwr", "ls"], 1, stdout='{"success": false, "error-message": "x"}',
                                         stderr="")
    monkeypatch.setattr(deployment, "flwr", lambda *args, **kwargs: answer)
    with pytest.raises(RunUnknownError, match="flwr ls --run-id 42 gave no status"):
        deployment.run_status("42")
    deployment.run_id = "42"
    message = deployment.failure(LOST)
    assert "no longer knows run 42" in message and "Restart every SuperNode" in message
    assert "resume=true" in message
