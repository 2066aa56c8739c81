"""node-keys-file: each task bound to its SuperNode's public key. The handshake runs the real ClientApp through
the in-process grid (each node answers with the task of its --node-config), and the grid reports each node's
public key as a deployment's grid does (``NodeInfo.public_key``, PEM, as ``flwr supernode register`` stores it)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.deploy.loopback import generate_certificates
from atmflow.models.mobilenet import pretrained_encoder
from atmflow.preflight import check_node_keys
from atmflow.server.experiment import run_experiment
from atmflow.server.node_keys import NodeKeysError, load_node_keys
from atmflow.server.nodes import discover_and_evaluate, discover_task_nodes
from atmflow.sim.inprocess import InProcessGrid

TASKS = ("mnist", "digits")


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP384R1()).public_key()


def _openssh(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


KEYS = {name: _key() for name in ("mnist", "digits", "stranger")}


def _keys_file(path: Path, keys: dict[str, str]) -> Path:
    path.write_text("".join(f'{task} = "{key}"\n' for task, key in keys.items()))
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return _keys_file(tmp_path / "node-keys.toml", {t: _openssh(KEYS[t]) for t in TASKS})


class KeyedGrid(InProcessGrid):
    """The in-process grid whose nodes hold a task (``--node-config``) and a public key each: it stands for a
    deployment's grid."""

    simulation = False

    def __init__(self, run_config: dict[str, Any], nodes: list[tuple[str, str | None]]) -> None:
        super().__init__(client_app, run_config, len(nodes))
        self.keys: dict[int, bytes] = {}
        for node, (task, key) in zip(sorted(self.contexts), nodes, strict=True):
            self.contexts[node].node_config = {"task": task}
            if key is not None:
                self.keys[node] = public_key_to_bytes(KEYS[key])

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, public_key=self.keys.get(node, b"")) for node in self.get_node_ids()]


def _handshake(grid: KeyedGrid, keys_file: Path, policy: str, with_weights: bool) -> dict[int, str]:
    bound = load_node_keys(str(keys_file), TASKS)
    if with_weights:  # a fresh run's handshake (carries the pretrained weights)
        weights = ArrayRecord(pretrained_encoder().state_dict())
        return discover_and_evaluate(grid, TASKS, 1.0, 60.0, weights, "test", "pretrained", policy, bound)[0]
    return discover_task_nodes(grid, TASKS, 1.0, 60.0, bound, policy)


@pytest.mark.parametrize("with_weights", [False, True])
def test_each_node_holding_its_tasks_key_is_accepted(tiny: dict[str, Any], keys_file: Path,
                                                    with_weights: bool) -> None:
    grid = KeyedGrid(load_config(tiny).to_run_config(), [("mnist", "mnist"), ("digits", "digits")])
    assert _handshake(grid, keys_file, "fail", with_weights) == {100: "mnist", 101: "digits"}


@pytest.mark.parametrize("with_weights", [False, True])
def test_a_node_claiming_another_nodes_task_is_refused(tiny: dict[str, Any], keys_file: Path,
                                                       with_weights: bool) -> None:
    """Node 101 holds digits' key but claims mnist (without the binding this is only a duplicate claim)."""
    grid = KeyedGrid(load_config(tiny).to_run_config(), [("mnist", "mnist"), ("mnist", "digits")])
    match = (r"handshake: refused node 101 claims task 'mnist', but field 'public key' does not match: its key is "
             r"the one node-keys-file gives for task 'digits'")
    with pytest.raises(RuntimeError, match=match):
        _handshake(grid, keys_file, "fail", with_weights)
    # skip: the impostor is left out, and digits, which has no node now, is named with the refusal
    refused = r"no node holds task\(s\) \['digits'\].*101: .refused: node 101 claims task 'mnist'"
    with pytest.raises(RuntimeError, match=refused):
        _handshake(grid, keys_file, "skip", with_weights)


@pytest.mark.parametrize("key", ["stranger", None])
def test_an_extra_node_with_an_unbound_key_fails_the_run_or_is_left_out(tiny: dict[str, Any], keys_file: Path,
                                                                        key: str | None) -> None:
    grid = KeyedGrid(load_config(tiny).to_run_config(), [("mnist", "mnist"), ("digits", "digits"), ("mnist", key)])
    why = "its key is not in node-keys-file" if key else "the SuperLink holds no public key for it"
    with pytest.raises(RuntimeError, match=rf"refused node 102 claims task 'mnist'.*{why}"):
        _handshake(grid, keys_file, "fail", with_weights=False)
    assert _handshake(grid, keys_file, "skip", with_weights=True) == {100: "mnist", 101: "digits"}


def test_a_run_with_an_impostor_stops_at_the_handshake(tiny: dict[str, Any], keys_file: Path) -> None:
    cfg = load_config({**tiny, "tasks": ",".join(TASKS), "node-keys-file": str(keys_file), "run-name": "keys"})
    grid = KeyedGrid(cfg.to_run_config(), [("mnist", "mnist"), ("mnist", "digits")])
    with pytest.raises(RuntimeError, match=r"refused node 101 claims task 'mnist'"):
        run_experiment(grid, cfg)
    assert not (Path(cfg.output_dir) / "keys" / "checkpoint.json").exists()


def test_a_simulation_refuses_node_keys(keys_file: Path) -> None:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    class Simulation(InMemoryGrid):
        def __init__(self) -> None:
            pass

        def get_node_ids(self) -> list[int]:
            return [1, 2]

    with pytest.raises(RuntimeError, match="the nodes of a simulation have none: leave node-keys-file empty"):
        discover_task_nodes(Simulation(), TASKS, 1.0, 60.0, load_node_keys(str(keys_file), TASKS))


@pytest.mark.parametrize(("content", "match"), [
    ('mnist = "ecdsa-sha2-nistp384 AAAA"\n', r"task 'mnist': not an OpenSSH public key"),
    ("mnist = 3\n", r"task 'mnist': expected a string"),
    ("mnist = [\n", "not a TOML file"),
    (f'mnist = "{_openssh(KEYS["mnist"])}"\n', r"no key for task\(s\) \['digits'\]"),
    (f'mnist = "{_openssh(KEYS["mnist"])}"\ndigits = "{_openssh(KEYS["mnist"])}"\n',
     r"one key is given for several tasks \[\['digits', 'mnist'\]\]"),
])
def test_a_bad_node_keys_file_is_refused_naming_it(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(content)
    with pytest.raises(NodeKeysError, match=rf"node-keys-file {path}.*{match}"):
        load_node_keys(str(path), TASKS)
    with pytest.raises(NodeKeysError, match="cannot read it"):
        load_node_keys(str(tmp_path / "missing.toml"), TASKS)


def test_atmflow_validate_checks_the_node_keys_file(keys_file: Path, tmp_path: Path) -> None:
    assert check_node_keys(load_config({"tasks": ",".join(TASKS), "node-keys-file": str(keys_file)})) == []
    assert check_node_keys(load_config({"tasks": ",".join(TASKS)})) == []
    cfg = load_config({"tasks": "mnist,digits,fashion-mnist", "node-keys-file": str(keys_file)})
    assert check_node_keys(cfg) == [f"node-keys-file {keys_file}: no key for task(s) ['fashion-mnist']; every task "
                                    "of the run needs its node's key (else any node could claim it)"]


def test_an_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    path = _keys_file(tmp_path / "keys.toml", {"mnist": _openssh(rsa_key), "digits": _openssh(KEYS["digits"])})
    with pytest.raises(NodeKeysError, match="ECDSA keys on a NIST curve"):
        load_node_keys(str(path), TASKS)


def test_generate_sh_writes_the_node_keys_file(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path / "certs", TASKS)
    bound = load_node_keys(str(certs / "node-keys.toml"), TASKS)
    for task in TASKS:
        pub = serialization.load_ssh_public_key((certs / f"node-{task}.pub").read_bytes())
        assert bound[task] == pub.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
