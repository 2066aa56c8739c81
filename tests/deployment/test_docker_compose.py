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
