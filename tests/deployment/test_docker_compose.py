"""The Docker compose files validate (Debian's ``docker-compose config`` needs no engine) and give every
task of the default run a SuperNode with that task, its data mounted read-only, under every overlay."""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from atmflow.app_config import app_defaults
from atmflow.config import load_config
from atmflow.data.tasks import CONFIG_SOURCES as DATA_PATH_KEYS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
OVERLAYS = [(), ("compose.tls.yml",), ("compose.gpu.yml",), ("compose.tls.yml", "compose.gpu.yml")]
COMPOSE = shutil.which("docker-compose")


@functools.cache
def _config(*overlays: str) -> dict[str, Any]:
    assert COMPOSE is not None
    files = [arg for name in ("compose.yml", *overlays) for arg in ("-f", str(DOCKER / name))]
    done = subprocess.run([COMPOSE, *files, "config"], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, f"docker-compose config failed for {overlays}: {done.stderr}"
    return yaml.safe_load(done.stdout)


def _option(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    return None


def _node_config(command: list[str]) -> dict[str, str]:
    raw = _option(command, "--node-config") or ""
    return {k: v.strip("'\"") for k, v in (item.split("=", 1) for item in shlex.split(raw, posix=False))}


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)")
@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: "+".join(("compose.yml", *o)))
def test_every_task_has_one_supernode_with_its_data(overlays: tuple[str, ...]) -> None:
    services = _config(*overlays)["services"]
    tasks = load_config(app_defaults(ROOT)).tasks
    nodes = {name: s for name, s in services.items() if s["command"][0] == "flower-supernode"}
    claimed = {name: _node_config(s["command"]).get("task") for name, s in nodes.items()}
    assert sorted(claimed.values()) == sorted(tasks), f"SuperNode tasks {claimed} != run tasks {tasks}"
    tls = "compose.tls.yml" in overlays
    superlink = services["superlink"]["command"]
    assert ("--insecure" in superlink) is not tls
    if tls:
        assert _option(superlink, "--ssl-certfile") and "--enable-supernode-auth" in superlink
    for name, service in nodes.items():
        command, task = service["command"], claimed[name]
        assert _option(command, "--superlink"), name
        if tls:
            assert _option(command, "--root-certificates") == "/certs/ca.crt", name
            assert _option(command, "--auth-supernode-private-key") == f"/certs/node-{task}", name
        else:
            assert "--insecure" in command, name
        data_path = _node_config(command).get("data-path")
        assert (data_path is not None) == (task in DATA_PATH_KEYS), f"{name}: data-path {data_path!r}"
        if data_path is not None:
            mounts = [v for v in service.get("volumes", []) if str(v).split(":")[1:2] == [data_path]]
            assert mounts and str(mounts[0]).endswith(":ro"), f"{name}: {data_path} is not mounted read-only"
        if "compose.gpu.yml" in overlays:
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["capabilities"] == ["gpu"], name


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)")
def test_tls_overlay_registers_every_node_key() -> None:
    services = _config("compose.tls.yml")["services"]
    script = services["register-supernodes"]["command"][0]
    tasks = load_config(app_defaults(ROOT)).tasks
    assert all(t in script.split(";")[0] for t in tasks), script


def _published_host_ips(service: dict[str, Any]) -> list[str]:
    """The host address of every port a service publishes ("" = every interface of the host)."""
    ips = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax
            ips.append(str(port.get("host_ip", "")))
        else:  # [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]
            parts = str(port).split(":")
            ips.append(parts[0] if len(parts) == 3 else "")
    return ips


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)")
@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: "+".join(("compose.yml", *o)))
def test_the_superlink_port_with_the_run_submission_api_is_published_on_loopback_only(
        overlays: tuple[str, ...]) -> None:
    """Flower 1.42 serves the Control API (run submission) on the SuperNodes' port: the host publishes it on
    127.0.0.1 unless the operator sets SUPERLINK_PUBLISH_ADDRESS (docs/deployment.md, Security)."""
    services = _config(*overlays)["services"]
    published = {name: _published_host_ips(s) for name, s in services.items() if s.get("ports")}
    assert published == {"superlink": ["127.0.0.1"]}, published


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)")
@pytest.mark.parametrize("overlays", [o for o in OVERLAYS if "compose.tls.yml" in o],
                         ids=lambda o: "+".join(("compose.yml", *o)))
def test_each_service_mounts_only_its_own_keys(overlays: tuple[str, ...]) -> None:
    services = _config(*overlays)["services"]
    tasks = load_config(app_defaults(ROOT)).tasks
    expected = {"superlink": {"ca.crt", "server.crt", "server.key", "node-keys.toml"},
                "register-supernodes": {"ca.crt", *(f"node-{t}.pub" for t in tasks)},
                "flwr": {"ca.crt"}}
    for name, service in services.items():
        mounts = [str(v).split(":") for v in service.get("volumes", [])]
        certs = {Path(target).name: (Path(source).name, mode) for source, target, *mode in mounts
                 if target.startswith("/certs")}
        command = service.get("command", [])
        task = _node_config(command).get("task") if command and command[0] == "flower-supernode" else None
        want = {"ca.crt", f"node-{task}"} if task else expected[name]
        assert set(certs) == want, f"{name} mounts {sorted(certs)}, expected only {sorted(want)}"
        for target, (source, mode) in certs.items():  # one file each, under its own name, read-only
            assert source == target and mode == ["ro"], f"{name}: {source} -> /certs/{target} {mode}"
        referenced = [a.split("=", 1)[1] for a in command if "=/certs/" in a]
        assert all(Path(p).name in certs for p in referenced), f"{name} uses {referenced} but mounts {sorted(certs)}"
    run_config = services["flwr"]["command"][-1]
    assert "node-keys-file='/certs/node-keys.toml'" in run_config  # read by the ServerApp, in the SuperLink


def test_the_image_runs_as_a_non_root_user_that_owns_only_the_writable_folders() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    users = [line.split(None, 1)[1].strip() for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"the image's last USER is {users[-1:] or 'unset (root)'}"
    assert "ARG ATMFLOW_UID=10001" in dockerfile and "chown -R atmflow:atmflow /flwr /outputs /state" in dockerfile


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)")
@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: "+".join(("compose.yml", *o)))
def test_no_service_switches_back_to_root(overlays: tuple[str, ...]) -> None:
    for name, service in _config(*overlays)["services"].items():
        assert str(service.get("user", "atmflow")).split(":")[0] not in ("root", "0"), name
