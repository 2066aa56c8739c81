"""Run the app as a real Flower simulation (``flwr run``, Ray backend) and clean up after it.

``flwr run`` against the ``:local:`` connection leaves a detached ``flower-superlink`` running
that nothing stops. Instead, this module starts the simulation SuperLink itself (on free loopback
ports, with ``FLWR_HOME`` inside the run folder), points a connection at it, runs
``flwr run <app> <connection> --stream``, and always stops what it started, by PID: the SuperLink
and every process that inherited this run's ``FLWR_HOME`` (SuperExec, the simulation process, Ray),
including those that detached into a session of their own.

Ray: by default the simulation starts a private Ray instance of its own (``RAY_ADDRESS=local``, so a
cluster that someone else started on this machine is never joined by accident). With
``--ray-address <head>:<port>`` it attaches to an existing Ray cluster instead: the simulation
process inherits ``RAY_ADDRESS``, and Flower's Ray backend calls ``ray.init()`` without an address,
which reads it (flwr 1.42 has no federation-config key for the address; see docs/cluster.md).

Usage: ``python -m atmflow.sim.flwr_local [--run-config "key=value ..."] [--num-cpus-per-client 1]
[--num-gpus-per-client 0.25] [--ray-address 10.0.0.1:6379]``
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atmflow.app_config import anchored_run_config, resolve_config
from atmflow.processes import (
    LOCAL_RAY,
    flwr_bin,
    flwr_env,
    free_port,
    stop_process,
    stop_processes_with_env,
    wait_for_port,
)
from atmflow.run_status import RunStatus, parse_run_status, started_run_id


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail early, naming the address, unless ``address`` is ``host:port`` and something listens there
    (the head of a Ray cluster: the address that ``ray start --head`` prints)."""
    if "://" in address:
        raise ValueError(f"--ray-address {address!r}: Ray Client addresses (ray://) are not supported; run "
                         "flwr_local on a machine of the cluster and pass the head's host:port (GCS port, 6379)")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray-address must be '{LOCAL_RAY}' or host:port of a Ray cluster's head (the "
                         f"address that `ray start --head` prints), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RuntimeError(f"no Ray cluster answers at {address} ({err}); start its head with "
                           f"`ray start --head --port={port}` on {host} (the workers with "
                           f"`ray start --address={address}`), or pass the address it printed") from err







def stop_run_processes(superlink: subprocess.Popen[bytes], flwr_home: Path, grace_s: float = 15.0) -> None:
    """Stop the SuperLink, then every process carrying this run's FLWR_HOME (SIGTERM, then SIGKILL)."""
    stop_process(superlink, grace_s)
    stop_processes_with_env("FLWR_HOME", str(flwr_home), grace_s)


@contextmanager
def simulation_superlink(flwr_home: Path, ray_address: str = LOCAL_RAY) -> Iterator[str]:
    """Start a simulation SuperLink; yield its address; stop it and everything it started. The simulation
    processes it launches inherit ``RAY_ADDRESS=ray_address`` (see ``flwr_env``)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = flwr_home / "superlink.log"
    cmd = [flwr_bin("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(port),
           "--database", str(flwr_home / "state.db"), "--log-file", str(log),
           "--health-server-address", f"127.0.0.1:{free_port()}", "--disable-runtime-dependency-installation"]
    proc = subprocess.Popen(cmd, env=flwr_env(flwr_home, ray_address), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_run_processes(proc, flwr_home)


def write_connection(flwr_home: Path, address: str) -> None:
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "{address}"\ninsecure = true\n')


def federation_config(num_supernodes: int, num_cpus_per_client: int = 1, num_gpus_per_client: float = 0.0) -> str:
    """The ``flwr run --federation-config`` value: one virtual SuperNode per task and the Ray resources that
    each ClientApp reserves (``client-resources-num-cpus`` / ``client-resources-num-gpus``, flwr 1.42's
    SimulationConfig fields). A GPU share below 1 lets several clients run on one GPU at once."""
    if num_cpus_per_client < 1:
        raise ValueError(f"num-cpus-per-client must be an integer >= 1, got {num_cpus_per_client}")
    if num_gpus_per_client < 0 or (num_gpus_per_client > 1 and not float(num_gpus_per_client).is_integer()):
        raise ValueError(f"num-gpus-per-client must be a share in [0, 1] or a whole number of GPUs, got "
                         f"{num_gpus_per_client} (Ray accepts fractions only below one GPU)")
    return (f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus_per_client} "
            f"client-resources-num-gpus={float(num_gpus_per_client)}")


def run_simulation(app_dir: Path, flwr_home: Path, run_config: str = "", num_cpus_per_client: int = 1,
                   timeout_s: float | None = None, num_gpus_per_client: float = 0.0,
                   ray_address: str = LOCAL_RAY) -> int:
    """Validate the config, run ``flwr run`` on a fresh simulation SuperLink; 0 if the run completed.

    ``flwr run --stream`` exits 0 whenever it submitted the run; the SuperLink's status of the run decides
    (:mod:`atmflow.run_status`). A run that did not complete returns non-zero and prints its one error
    (the exception, with the task and node for a client's failure) last, on stderr.

    ``ray_address``: ``local`` (a private Ray instance for this run) or ``host:port`` of an existing
    Ray cluster's head, checked to answer before anything starts."""
    cfg = resolve_config(app_dir, run_config)
    run_config = anchored_run_config(app_dir, run_config)  # relative task-file / output-dir: in the app folder
    if cfg.device == "cuda" and num_gpus_per_client == 0:
        raise ValueError("device='cuda' needs --num-gpus-per-client > 0: Ray hides the GPUs from a client "
                         "that reserves none (CUDA_VISIBLE_DEVICES is emptied)")
    federation = federation_config(len(cfg.tasks), num_cpus_per_client, num_gpus_per_client)
    if ray_address != LOCAL_RAY:
        check_ray_address(ray_address)
    with simulation_superlink(flwr_home, ray_address) as address:
        write_connection(flwr_home, address)
        cmd = [flwr_bin("flwr"), "run", str(app_dir), "sim", "--stream", "--federation-config", federation]
        if run_config:
            cmd += ["--run-config", run_config]
        env = flwr_env(flwr_home, ray_address)
        code, output = stream(cmd, env, timeout_s)
        status = final_status(env, started_run_id(output))
    if status is not None and status.completed and code == 0:
        return 0
    why = status.error() if status is not None else f"flwr run exited {code} and the SuperLink reports no run"
    print(f"flwr_local: the run failed: {why}", file=sys.stderr, flush=True)
    return code or 1


def stream(cmd: list[str], env: dict[str, str], timeout_s: float | None) -> tuple[int, str]:
    """Run ``cmd``, echoing its output as it comes; return its exit code and the output (killed after
    ``timeout_s``: exit code 124)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
    if timer is not None:
        timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
    timed_out = timeout_s is not None and code < 0
    return (124 if timed_out else code), "".join(lines)


def final_status(env: dict[str, str], run_id: str | None, wait_s: float = 60.0) -> RunStatus | None:
    """The SuperLink's final status of run ``run_id`` (default: its latest run), waiting up to ``wait_s``
    for it to finish; None when ``flwr ls`` lists no run (``flwr run`` failed before submitting one)."""
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run([flwr_bin("flwr"), "ls", "sim", "--format", "json"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        try:
            status = parse_run_status(done.stdout, run_id)
        except ValueError:
            return None
        if status.finished or time.monotonic() > deadline:
            return status
        time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default=".", help="folder of the Flower app (pyproject.toml)")
    parser.add_argument("--flwr-home", default=".flwr", help="FLWR_HOME for this run")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--num-cpus-per-client", type=int, default=1, help="CPUs each client reserves in Ray")
    parser.add_argument("--num-gpus-per-client", type=float, default=0.0,
                        help="GPU share each client reserves in Ray, e.g. 0.25 = four clients per GPU")
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or LOCAL_RAY,
                        help="host:port of an existing Ray cluster's head to attach to (default: $RAY_ADDRESS "
                             "if set, else 'local' = a private Ray instance for this run)")
    args = parser.parse_args(argv)
    local = args.ray_address == LOCAL_RAY
    where = "a private local Ray instance" if local else f"the Ray cluster at {args.ray_address}"
    print(f"flwr_local: the simulation runs on {where}", file=sys.stderr)
    return run_simulation(Path(args.app).resolve(), Path(args.flwr_home).resolve(), args.run_config,
                          args.num_cpus_per_client, num_gpus_per_client=args.num_gpus_per_client,
                          ray_address=args.ray_address)


if __name__ == "__main__":
    raise SystemExit(main())
