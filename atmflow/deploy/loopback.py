"""A real Flower deployment on one machine: one ``flower-superlink`` and one ``flower-supernode`` per
task, as separate processes on 127.0.0.1, without Docker (what the tests and ``docs/deployment.md``
run; the Docker compose files in ``docker/`` start the same processes in containers).

Each SuperNode gets its task (and, for tasks read from a folder, its data path) through
``--node-config``; the server finds out which node holds which task with a handshake
(:mod:`atmflow.server.nodes`). Optionally the SuperLink serves TLS with certificates made by
``docker/certs/generate.sh`` and accepts only registered SuperNodes (``--enable-supernode-auth``,
one ECDSA key pair per node, registered with ``flwr supernode register``).

Every process this module starts runs in a session of its own and carries an environment marker
(``ATMFLOW_DEPLOYMENT=<workdir>``, plus ``ATMFLOW_DEPLOYMENT_NODE=<workdir>:<task>`` for a node);
:meth:`LoopbackDeployment.stop` stops exactly those (by PID: the started processes, then the
processes that carry the marker, e.g. the ServerApp / ClientApp processes they spawned), and
:meth:`LoopbackDeployment.leftovers` lists any that remain.

Usage: ``python -m atmflow.deploy.loopback --workdir .deploy [--tls] [--auth] [--run-config "..."]``
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from atmflow.app_config import anchored_run_config, resolve_config
from atmflow.processes import (
    command_line,
    flwr_bin,
    flwr_env,
    free_port,
    processes_with_env,
    signal_all,
    stop_process,
    stop_processes_with_env,
    wait_for_port,
)
from atmflow.run_status import COMPLETED, RunStatus, parse_run_status

ROOT = Path(__file__).resolve().parents[2]
GENERATE_CERTS = ROOT / "docker" / "certs" / "generate.sh"
MARKER = "ATMFLOW_DEPLOYMENT"
NODE_MARKER = "ATMFLOW_DEPLOYMENT_NODE"
CONNECTION = "deploy"


def generate_certificates(folder: Path, nodes: tuple[str, ...] = ()) -> Path:
    """Run ``docker/certs/generate.sh`` (CA, SuperLink certificate, one auth key pair per node) into ``folder``."""
    cmd = ["sh", str(GENERATE_CERTS), "--out", str(folder)]
    for node in nodes:
        cmd += ["--node", node]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{GENERATE_CERTS} failed ({done.returncode}): {done.stderr.strip()}")
    return folder


LOST = "lost"  # run(): the SuperLink no longer knows the run


class RunUnknownError(RuntimeError):
    """The SuperLink reports no status for a run (it was restarted, and its state is in memory)."""


@dataclass
class Node:
    task: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class LoopbackDeployment:
    """SuperLink + one SuperNode per task on 127.0.0.1; a context manager that always stops them.

    ``tls``: serve the SuperLink over TLS (certificates generated into ``workdir/certs``);
    ``auth``: SuperNode authentication (needs ``tls``); ``data_paths``: ``{task: folder}`` passed to
    that task's node as ``dataset-path``.
    """

    workdir: Path
    tasks: tuple[str, ...]
    tls: bool = False
    auth: bool = False
    data_paths: Mapping[str, str] = field(default_factory=dict)
    superlink: subprocess.Popen[bytes] | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    port: int = 0
    last_status: RunStatus | None = None  # the SuperLink's last reported status of the run (run_status)
    flwr_exit_code: int | None = None  # the exit code of the last ``flwr run`` (run)
    run_id: str = ""  # the id of the last run submitted (run)

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS: pass tls=True with auth=True")
        self.workdir = self.workdir.resolve()
        self.flwr_home = self.workdir / "flwr-home"
        self.certs = self.workdir / "certs"

    # -- processes -------------------------------------------------------------------------------
    def _env(self, node: str | None = None) -> dict[str, str]:
        env = {**flwr_env(self.flwr_home), MARKER: str(self.workdir)}
        if node is not None:
            env[NODE_MARKER] = f"{self.workdir}:{node}"
        return env

    def _popen(self, cmd: list[str], log: Path, node: str | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(cmd, env=self._env(node), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _security(self) -> list[str]:
        return ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]

    def start(self) -> LoopbackDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            generate_certificates(self.certs, self.tasks if self.auth else ())
        self.port = free_port()
        self.start_superlink()
        self.write_connection()
        for task in self.tasks:
            if self.auth:
                self.register_node(task)
            self.start_node(task)
        return self

    def start_superlink(self) -> None:
        """Start the SuperLink on :attr:`port` and wait until it listens."""
        # In-memory state: with a SQLite file, a busy machine made Flower's log stream fail with
        # "database is locked" mid-run (flwr run then exits 0 while the run goes on).
        cmd = [flwr_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.tls:
            cmd += ["--ssl-certfile", str(self.certs / "server.crt"), "--ssl-keyfile", str(self.certs / "server.key"),
                    "--ssl-ca-certfile", str(self.certs / "ca.crt")]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        log = self.workdir / "superlink.log"
        self.superlink = self._popen(cmd, log)
        wait_for_port(self.port, self.superlink, log)

    def restart_superlink(self, grace_s: float = 10.0) -> None:
        """Stop the SuperLink (SIGTERM, as an operator's restart would) and start it again on the same port.

        Its state is in memory, so the restarted SuperLink knows no run and no node (with authentication the
        node keys are registered again here). Running SuperNodes do not rejoin it (Flower 1.42: their
        heartbeat with the old node id is refused, 401, and they stop trying): :meth:`restart_nodes`."""
        if self.superlink is not None:
            stop_process(self.superlink, grace_s)
        self.start_superlink()
        if self.auth:
            for task in self.tasks:
                self.register_node(task)

    def restart_nodes(self, grace_s: float = 10.0) -> None:
        """Stop every SuperNode (SIGTERM, with the ClientApps it started) and start it again."""
        for task, node in self.nodes.items():
            if node.proc is not None:
                stop_process(node.proc, grace_s)
            stop_processes_with_env(NODE_MARKER, f"{self.workdir}:{task}", grace_s)
            self.start_node(task)

    def write_connection(self) -> None:
        """``$FLWR_HOME/config.toml`` with a connection named ``deploy`` to this SuperLink."""
        security = (f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}\n')

    def flwr(self, *args: str, timeout: float | None = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this deployment (its FLWR_HOME)."""
        return subprocess.run([flwr_bin("flwr"), *args], env=self._env(), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def register_node(self, task: str) -> None:
        """Register the task node's public key with the SuperLink (SuperNode authentication)."""
        done = self.flwr("supernode", "register", str(self.certs / f"node-{task}.pub"), CONNECTION)
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register for task {task} failed: {done.stdout}{done.stderr}")

    def start_node(self, task: str) -> Node:
        """Start (or restart) the SuperNode of ``task``."""
        node = self.nodes.get(task) or Node(task, free_port(), self.workdir / f"supernode-{task}.log")
        if node.proc is not None and node.proc.poll() is None:
            raise RuntimeError(f"the SuperNode of task {task} is already running (pid {node.proc.pid})")
        config = f"task='{task}'" + (f" dataset-path='{self.data_paths[task]}'" if task in self.data_paths else "")
        cmd = [flwr_bin("flower-supernode"), *self._security(), "--superlink", f"127.0.0.1:{self.port}",
               "--port", str(node.port), "--node-config", config]
        if self.auth:
            cmd += ["--auth-supernode-private-key", str(self.certs / f"node-{task}")]
        node.proc = self._popen(cmd, node.log, task)
        self.nodes[task] = node
        return node

    def kill_node(self, task: str) -> None:
        """Kill the SuperNode of ``task`` and what it spawned at once (SIGKILL, as a crash would)."""
        node = self.nodes[task]
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait()
        signal_all(processes_with_env(NODE_MARKER, f"{self.workdir}:{task}"), signal.SIGKILL)

    def kill_serverapp(self) -> list[int]:
        """Kill (SIGKILL, as a crash would) the ``flwr-serverapp`` processes of this deployment; their PIDs."""
        pids = [pid for pid in processes_with_env(MARKER, str(self.workdir)) if "flwr-serverapp" in command_line(pid)]
        signal_all(pids, signal.SIGKILL)
        return pids

    def run(self, app_dir: Path, run_config: str = "", timeout_s: float = 3600.0,
            log_name: str = "flwr-run.log") -> tuple[str, str]:
        """``flwr run <app> deploy --stream``, then wait until the SuperLink reports the run finished.

        Returns the run's final status (``finished:completed``, ``finished:failed``, ...; ``timeout``; or
        :data:`LOST` when the SuperLink no longer knows the run: it was restarted, and its state is in
        memory) and the streamed output (also written to ``log_name``). The status comes from ``flwr ls``,
        not from the exit code of ``flwr run``, which is 0 whenever the run was submitted.
        """
        deadline = time.monotonic() + timeout_s
        cmd = [flwr_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            cmd += ["--run-config", run_config]
        log = self.workdir / log_name
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            finally:
                stop_process(proc, grace_s=5.0)
        self.flwr_exit_code = proc.returncode
        output = log.read_text()
        found = re.search(r"Successfully started run (\d+)", output)
        if found is None:
            raise RuntimeError(f"flwr run did not start a run; see {log}:\n{output[-2000:]}")
        self.run_id = found.group(1)
        try:
            status = self.run_status(self.run_id)
            while not status.startswith("finished") and time.monotonic() < deadline:
                time.sleep(5.0)
                status = self.run_status(self.run_id)
        except RunUnknownError:
            self.last_status = None
            return LOST, output
        return (status if status.startswith("finished") else "timeout"), output

    def run_status(self, run_id: str) -> str:
        """The SuperLink's status of a run (``flwr ls --run-id``), e.g. ``finished:completed``; the full record
        (with the ServerApp's error of a failed run) is kept in :attr:`last_status`."""
        done = self.flwr("ls", "--run-id", run_id, "--format", "json", CONNECTION)
        try:
            self.last_status = parse_run_status(done.stdout, run_id)
        except ValueError as exc:
            raise RunUnknownError(f"flwr ls --run-id {run_id} gave no status: {done.stdout}{done.stderr}") from exc
        return self.last_status.status

    def failure(self, status: str) -> str:
        """One line for a person on why the last run (which ended with ``status``, see :meth:`run`) failed."""
        if status == LOST:
            return (f"the SuperLink no longer knows run {self.run_id}: it was restarted or stopped, and it keeps its "
                    "state in memory. Restart every SuperNode as well (they do not rejoin a restarted SuperLink), "
                    "then submit the run again with resume=true")
        record = self.last_status
        return record.error() if record is not None else f"run {status} (no status from the SuperLink)"

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the SuperNodes, the SuperLink, then every process that carries this deployment's marker."""
        for node in self.nodes.values():
            if node.proc is not None:
                stop_process(node.proc, grace_s)
        if self.superlink is not None:
            stop_process(self.superlink, grace_s)
        stop_processes_with_env(MARKER, str(self.workdir), grace_s)

    def leftovers(self) -> list[int]:
        """PIDs of this deployment's processes still running (empty after :meth:`stop`)."""
        started = [p for p in [self.superlink, *(n.proc for n in self.nodes.values())] if p is not None]
        return sorted({p.pid for p in started if p.poll() is None} | set(processes_with_env(MARKER, str(self.workdir))))

    def __enter__(self) -> LoopbackDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default=str(ROOT), help="folder of the Flower app (pyproject.toml)")
    parser.add_argument("--workdir", default=".deploy", help="folder for logs, certificates and FLWR_HOME")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--tls", action="store_true", help="TLS with certificates from docker/certs/generate.sh")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    args = parser.parse_args(argv)
    app = Path(args.app).resolve()
    cfg = resolve_config(app, args.run_config)
    started = time.perf_counter()
    with LoopbackDeployment(Path(args.workdir), cfg.tasks, tls=args.tls, auth=args.auth) as deployment:
        status, _ = deployment.run(app, anchored_run_config(app, args.run_config))
    print(f"run {status} after {time.perf_counter() - started:.0f} s; logs in {args.workdir}",
          file=sys.stderr)
    if status == COMPLETED:
        return 0
    print(f"loopback: the run failed: {deployment.failure(status)}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
