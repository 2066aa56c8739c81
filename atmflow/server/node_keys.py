"""Binding each task to its SuperNode's public key (run-config key ``node-keys-file``).

The handshake (:mod:`atmflow.server.nodes`) learns which node holds which task from what the nodes
say. In a deployment the operator can also say which *key* holds each task, and the server then
refuses a node that claims a task whose key is not its own.

Where the key comes from (Flower 1.42, read in the installed package): a SuperNode started with
``--auth-supernode-private-key`` signs every Fleet API request, and the SuperLink checks the signature
and that the signing key is the one registered for the node id the request names
(``flwr/superlink/routers/fleet/node_auth.py``, ``NodeAuthMiddleware``). The ServerApp reads each
node's key through ``Grid.get_nodes()`` (``NodeInfo.public_key``, filled from the SuperLink's state by
``flwr/superlink/servicer/runtime/runtime_handlers.py``, ``get_nodes``), PEM SubjectPublicKeyInfo as
``flwr supernode register`` stores it. So a node cannot present another node's key without that
node's private key.

The file is TOML, one line per task, each value the node's OpenSSH public key (the content of
``node-<task>.pub``; ``docker/certs/generate.sh`` writes this file as ``node-keys.toml``)::

    mnist = "ecdsa-sha2-nistp384 AAAAE2VjZHNh... atmflow-mnist"
    digits = "ecdsa-sha2-nistp384 AAAAE2VjZHNh... atmflow-digits"
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

KEY_FIELD = "public key"  # the field a refusal names (the node's authenticated key, NodeInfo.public_key)
HOW_TO_FIX = ("start each task's SuperNode with its own key (--auth-supernode-private-key node-<task>), or fix "
              "node-keys-file")


class NodeKeysError(ValueError):
    """``node-keys-file`` cannot be used: missing, not TOML, a bad key, a task without a key, a key used twice."""


def _der(key: ec.EllipticCurvePublicKey) -> bytes:
    """A key in one comparable form (DER SubjectPublicKeyInfo), whatever encoding it came in."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _openssh_key(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise NodeKeysError(f"{where}: expected a string holding an OpenSSH public key (the content of the node's "
                            f".pub file), got {type(text).__name__}")
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError) as err:
        raise NodeKeysError(f"{where}: not an OpenSSH public key ({err}); paste the content of the node's .pub "
                            "file, e.g. \"ecdsa-sha2-nistp384 AAAA... atmflow-mnist\"") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise NodeKeysError(f"{where}: Flower 1.42 SuperNode keys are ECDSA keys on a NIST curve "
                            "(ssh-keygen -t ecdsa -b 384); this is another kind of key")
    return _der(key)


def load_node_keys(path: str, tasks: Sequence[str]) -> dict[str, bytes]:
    """``{task: key}`` for every task of the run, from ``path`` (see the module docstring).

    Every task of the run needs a key (an unbound task could be claimed by any node) and no key may
    hold two tasks (one node per task); tasks the run does not list may be in the file. Raises
    :class:`NodeKeysError` naming the file, the task and what to do.
    """
    where = f"node-keys-file {path}"
    try:
        table = tomllib.loads(Path(path).expanduser().read_text())
    except OSError as err:
        raise NodeKeysError(f"{where}: cannot read it ({err.strerror or err}); give the path of the task -> "
                            "SuperNode public key file on the machine that runs the ServerApp (the SuperLink's)") \
            from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise NodeKeysError(f"{where}: not a TOML file ({err}); write one line per task: "
                            "task = \"<the content of node-<task>.pub>\"") from None
    keys = {str(task): _openssh_key(text, f"{where}, task {task!r}") for task, text in table.items()}
    missing = [t for t in tasks if t not in keys]
    if missing:
        raise NodeKeysError(f"{where}: no key for task(s) {missing}; every task of the run needs its node's key "
                            "(else any node could claim it)")
    holders: dict[bytes, list[str]] = {}
    for task, key in keys.items():
        holders.setdefault(key, []).append(task)
    shared = [sorted(names) for names in holders.values() if len(names) > 1]
    if shared:
        raise NodeKeysError(f"{where}: one key is given for several tasks {shared}; each task's data is on its own "
                            "SuperNode, with its own key")
    return {t: keys[t] for t in tasks}


def node_public_keys(nodes: Iterable[NodeInfo]) -> dict[int, bytes | None]:
    """``{node id: key}`` from ``Grid.get_nodes()``; None for a node whose SuperLink entry holds no usable key."""
    keys: dict[int, bytes | None] = {}
    for info in nodes:
        try:
            key = serialization.load_pem_public_key(bytes(info.public_key))
        except (ValueError, TypeError):
            keys[int(info.node_id)] = None
            continue
        keys[int(info.node_id)] = _der(key) if isinstance(key, ec.EllipticCurvePublicKey) else None
    return keys


def refused_claims(claimed: Mapping[str, Sequence[int]], node_keys: Mapping[int, bytes | None],
                   bound: Mapping[str, bytes]) -> dict[int, str]:
    """``{node: why}`` for every node that claims a bound task without holding that task's key."""
    task_of_key = {key: task for task, key in bound.items()}
    refused = {}
    for task, nodes in claimed.items():
        if task not in bound:
            continue  # a task the run does not list: the handshake refuses it anyway
        for node in nodes:
            key = node_keys.get(node)
            if key == bound[task]:
                continue
            if key is None:
                why = ("the SuperLink holds no public key for it (start its SuperNode with "
                       "--auth-supernode-private-key, over TLS)")
            elif key in task_of_key:
                why = f"its key is the one node-keys-file gives for task {task_of_key[key]!r}"
            else:
                why = "its key is not in node-keys-file"
            refused[node] = f"node {node} claims task {task!r}, but field {KEY_FIELD!r} does not match: {why}"
    return refused
