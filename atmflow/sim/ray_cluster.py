"""A Ray cluster on this machine (a head and workers on loopback), started and stopped by PID.

Past one machine, the simulation runs on an existing Ray cluster: ``ray start --head`` on one node,
``ray start --address=<head>:<port>`` on the others, and ``python -m atmflow.sim.flwr_local
--ray-address <head>:<port>`` (docs/cluster.md). This module builds the same thing on one machine, to
try and test that attach path: each node is a real ``ray start`` with its own ``--temp-dir`` under one
short root folder, and free ports for everything Ray would otherwise open on a fixed port (GCS 6379,
Ray Client 10001, dashboard 8265, dashboard agent 52365), so that it coexists with other Ray instances.

Stopping never uses ``ray stop`` (it stops every Ray instance of the machine, other users' too). It
stops exactly this cluster's processes: those that inherited the ``ATMFLOW_RAY_CLUSTER=<root>``
marker of our ``ray start`` calls, those whose command line names the root folder, and all their
descendants (Ray's agents and workers rename themselves ``ray::...``, which hides their environment
from ``/proc``, but they are children of the cluster's raylets).

Usage (a cluster for trying ``flwr_local --ray-address``; Ctrl-C or SIGTERM stops it):
``python -m atmflow.sim.ray_cluster [--workers 1] [--num-cpus 1]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atmflow.processes import FLWR_ENV, ancestors, flwr_bin, free_port, processes_with_env, signal_all

MARKER = "ATMFLOW_RAY_CLUSTER"
Process = tuple[int, int]  # (pid, start time in clock ticks since boot): a PID that cannot be reused unseen


@dataclass(frozen=True)
class LocalRayCluster:
    """A running cluster: the head's address (what ``ray start --address`` and ``RAY_ADDRESS`` take), its
    root folder, and one temp dir per node (the head first)."""

    address: str
    root: Path
    node_dirs: tuple[Path, ...]


def _ray_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **FLWR_ENV, MARKER: str(root)}


def _ray_start(args: list[str], root: Path, log: Path, timeout_s: float) -> None:
    with log.open("ab") as out:
        code = subprocess.run([flwr_bin("ray"), "start", "--disable-usage-stats", *args], env=_ray_env(root),
                              stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"`ray start {' '.join(args)}` exited with code {code}; log {log}:\n{tail}")


def ray_status(address: str, timeout_s: float = 60.0) -> str:
    """The output of ``ray status --address <address>`` (this venv's Ray CLI; needs no dashboard)."""
    done = subprocess.run([flwr_bin("ray"), "status", "--address", address], env={**os.environ, **FLWR_ENV},
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`ray status --address {address}` failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def active_nodes(status: str) -> int:
    """Number of active nodes in a ``ray status`` report (lines ``<count> node_<id>`` under ``Active:``)."""
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in status else ""
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+node_[0-9a-f]+\s*$", active, re.MULTILINE))


def cpu_usage(status: str) -> tuple[float, float]:
    """(used, total) CPUs from a ``ray status`` report (``Total Usage: ... <used>/<total> CPU``)."""
    found = re.search(r"^\s*([\d.]+)/([\d.]+) CPU\b", status, re.MULTILINE)
    if not found:
        raise ValueError(f"no CPU usage line in this `ray status` report:\n{status}")
    return float(found.group(1)), float(found.group(2))


def start_local_cluster(root: Path, num_workers: int = 1, num_cpus: int = 1,
                        timeout_s: float = 120.0) -> LocalRayCluster:
    """Start a head and ``num_workers`` worker nodes with ``num_cpus`` CPUs each; return once all nodes are
    active. On failure, stop what was started (``stop_local_cluster``) before raising."""
    port, log = free_port(), root / "ray-start.log"
    address = f"127.0.0.1:{port}"
    node_dirs = tuple(root / f"n{i}" for i in range(num_workers + 1))
    try:
        _ray_start(["--head", "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard=false",
                    "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                    "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(node_dirs[0])],
                   root, log, timeout_s)
        for node_dir in node_dirs[1:]:
            _ray_start(["--address", address, "--num-cpus", str(num_cpus), "--temp-dir", str(node_dir),
                        "--dashboard-agent-listen-port", str(free_port())], root, log, timeout_s)
        deadline = time.monotonic() + timeout_s
        while (nodes := active_nodes(ray_status(address))) < len(node_dirs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {nodes} of {len(node_dirs)} Ray nodes became active at {address} "
                                   f"within {timeout_s:.0f} s; see {log} and {root}/n*/session_latest/logs")
            time.sleep(1.0)
    except BaseException:
        stop_local_cluster(root)
        raise
    return LocalRayCluster(address, root, node_dirs)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time) of a process, or None if it is gone or a zombie (dead, not yet reaped)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def cluster_processes(root: Path) -> set[Process]:
    """This cluster's processes: the ``MARKER=<root>`` environment, or ``root`` in the command line, and
    every descendant of those (never this process or its ancestors)."""
    skip, needle = ancestors(), str(root).encode()
    found = set(processes_with_env(MARKER, str(root)))
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid, stat = int(entry.name), _stat(int(entry.name))
        if stat is None:
            continue
        children.setdefault(stat[0], []).append(pid)
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {(pid, stat[1]) for pid in found if (stat := _stat(pid)) is not None}


def still_running(procs: set[Process]) -> set[Process]:
    """The processes of ``procs`` that still run (same PID and start time, not a zombie)."""
    return {(pid, start) for pid, start in procs if (stat := _stat(pid)) is not None and stat[1] == start}


def _signal(procs: set[Process], sig: signal.Signals) -> None:
    signal_all([pid for pid, _ in still_running(procs)], sig)


def stop_local_cluster(root: Path, grace_s: float = 5.0) -> None:
    """Stop every process of the cluster under ``root`` by PID: SIGTERM, then SIGKILL after ``grace_s``
    (the GCS and the raylets often outlive a SIGTERM by 15 s and more; this cluster keeps no state).
    The processes are listed before any is signalled (a child whose parent died is no longer found as a
    descendant), and each PID is checked against its start time, so a reused PID is never signalled."""
    seen = cluster_processes(root)
    _signal(seen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        seen |= cluster_processes(root)
        if not still_running(seen):
            return
        _signal(seen, signal.SIGTERM)
        time.sleep(0.5)
    seen |= cluster_processes(root)
    _signal(seen, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while (left := still_running(seen | cluster_processes(root))) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        raise RuntimeError(f"Ray processes of {root} still running after SIGKILL: {sorted(left)}")


@contextmanager
def local_ray_cluster(num_workers: int = 1, num_cpus: int = 1) -> Iterator[LocalRayCluster]:
    """A cluster in a fresh folder under /tmp (short on purpose: Ray's Unix socket paths,
    ``<temp-dir>/session_<date>_<pid>/sockets/plasma_store``, must stay under 107 bytes); stopped and
    removed afterwards, also on error."""
    root = Path(tempfile.mkdtemp(prefix="atmray-", dir="/tmp"))
    try:
        yield start_local_cluster(root, num_workers, num_cpus)
    finally:
        try:
            stop_local_cluster(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def nodes_that_ran(cluster: LocalRayCluster, actor_class: str) -> list[Path]:
    """The node temp dirs whose worker logs show an actor of class ``actor_class`` (Ray writes
    ``:actor_name:<class>`` into the log of each worker process that hosts an actor)."""
    marker = f":actor_name:{actor_class}".encode()
    return [node for node in cluster.node_dirs
            if any(marker in log.read_bytes() for log in (node / "session_latest" / "logs").rglob("worker-*.out"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="worker nodes besides the head")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs of each node")
    args = parser.parse_args(argv)
    with local_ray_cluster(args.workers, args.num_cpus) as cluster:
        print(f"Ray cluster of {args.workers + 1} nodes at {cluster.address} (temp dirs under {cluster.root}).\n"
              f"In another shell: python -m atmflow.sim.flwr_local --ray-address {cluster.address}\n"
              "Ctrl-C (or SIGTERM) stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through the context manager's cleanup
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where SIGINT came in ignored
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping the cluster", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
