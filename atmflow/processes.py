"""Starting and stopping Flower's processes (SuperLink, SuperNodes, Ray) by PID, shared by the simulation
driver (:mod:`atmflow.sim.flwr_local`), the Ray cluster helper and the loopback deployment.

Every process a launcher starts can be found again through an environment marker it inherited
(``FLWR_HOME=<folder>`` or a launcher's own key), including processes that detached into a session of
their own; stopping is SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
LOCAL_RAY = "local"  # RAY_ADDRESS value for which ray.init() starts a new local instance


def flwr_env(flwr_home: Path, ray_address: str = LOCAL_RAY) -> dict[str, str]:
    """Environment for flwr commands: offline settings, our FLWR_HOME, this venv's bin first on PATH
    (the SuperLink starts ``flower-superexec`` from PATH), and ``RAY_ADDRESS``: ``local`` (a private Ray
    instance) or the ``host:port`` of the cluster that the simulation's ``ray.init()`` attaches to."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **FLWR_ENV, "FLWR_HOME": str(flwr_home), "PATH": path, "RAY_ADDRESS": ray_address}


def flwr_bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv's flwr, not another one)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0,
                  name: str = "flower-superlink") -> None:
    """Wait until ``proc`` (called ``name`` in errors) listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f} s; see {log}")


def ancestors() -> set[int]:
    """This process and its parents (never stopped: they may carry the same FLWR_HOME, e.g. ``make``)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs of processes whose environment has ``key=value`` (Linux ``/proc``), except this process
    and its ancestors."""
    marker = f"{key}={value}".encode()
    skip = ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def command_line(pid: int) -> str:
    """The command line of process ``pid`` (arguments joined by spaces; "" if it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Stop one process we started: SIGTERM, then SIGKILL after ``grace_s``; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_processes_with_env(key: str, value: str, grace_s: float = 15.0) -> None:
    """Stop every process whose environment has ``key=value`` (SIGTERM, then SIGKILL)."""
    deadline = time.monotonic() + grace_s
    signal_all(processes_with_env(key, value), signal.SIGTERM)
    while (left := processes_with_env(key, value)) and time.monotonic() < deadline:
        time.sleep(0.5)
    signal_all(left, signal.SIGKILL)
