"""Failure drill on a loopback deployment: break a running 2-round PA-ATM in four ways, record what the
user sees, then continue it with ``resume = true`` and compare with an uninterrupted run.

The four faults, each injected once round 1 is checkpointed (``checkpoint.json`` says round 1, so
round 2 is under way):

* ``supernode``: the SuperNode of one task is killed (SIGKILL, with the ClientApp it runs); repaired
  by starting it again;
* ``superlink``: the SuperLink is restarted (SIGTERM, then started again on the same port; its state
  is in memory, so it forgets the run and the nodes); repaired by restarting the SuperNodes, which do
  not rejoin a restarted SuperLink on their own (Flower 1.42);
* ``serverapp``: the ``flwr-serverapp`` process is killed (SIGKILL); nothing to repair;
* ``read-only``: the run folder is made read-only (``chmod a-w``; for root, which ignores the mode,
  ``chattr +i``); repaired by making it writable again.

For each: the SuperLink's final status of the run and its error (what ``python -m
atmflow.deploy.loopback`` prints after ``loopback: the run failed:``), the exit code of ``flwr run
--stream``, the seconds from the fault to the run's end ("time to notice"), then the resumed run's
status, the round it resumed after, its wall time, and whether its results (every round's scores) and
final weights equal those of the same config run uninterrupted in one process (the paths give
bit-identical results, see the README, "Reproducibility").

Usage: ``python -m atmflow.deploy.drill [--workdir .drill] [--drills supernode superlink serverapp read-only]``
(writes ``<workdir>/drill.json`` and prints a Markdown table; docs/deployment.md, "Failure drill").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atmflow.app_config import app_defaults, parse_overrides
from atmflow.deploy.loopback import ROOT, LoopbackDeployment
from atmflow.files import atomic_write_text
from atmflow.run_status import COMPLETED
from atmflow.sim.local import run_inprocess

TASKS = ("digits", "mnist")
SMALL = ("train-size=100 test-size=20 image-size=32 individual=false rounds=2 num-threads=1 "
         f"tasks='{','.join(TASKS)}' node-wait-s=120 on-missing-task='fail'")
KILLED_TASK = TASKS[0]


@dataclass
class Outcome:
    """One ``flwr run`` of the drill: how it ended and when."""

    status: str = "unknown"  # the SuperLink's final status, or what went wrong asking for it
    error: str = ""  # the run's error as the SuperLink reports it (what the loopback driver prints)
    flwr_exit_code: int | None = None
    ended: float = 0.0  # time.monotonic() when the run was seen to end
    output: str = ""


@dataclass
class DrillResult:
    drill: str
    fault: str
    status: str
    message: str
    flwr_exit_code: int | None
    noticed_s: float | None  # from the fault to the run's end; None: not within the drill's limit
    leftover_serverapps: int  # flwr-serverapp processes still running after the run ended
    resume_status: str = ""
    resumed_after: int | None = None
    resume_s: float = 0.0
    same_as_uninterrupted: bool = False
    differences: list[str] = field(default_factory=list)


def run_config(out: Path, name: str, extra: str = "") -> str:
    return f"output-dir='{out}' run-name='{name}' {SMALL} {extra}".strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def uninterrupted(out: Path) -> Path:
    """The reference: the drill's config run to the end in this process (same numbers as a deployment)."""
    overrides = {**app_defaults(ROOT), **parse_overrides(run_config(out.resolve(), "uninterrupted"))}
    run_inprocess(overrides)
    return out / "uninterrupted"


def compare(run: Path, reference: Path) -> list[str]:
    """What differs between two finished runs: missing files, per-round scores, final weights."""
    if not (run / "results.json").is_file():
        return [f"no results.json in {run}"]
    got, want = (json.loads((p / "results.json").read_text()) for p in (run, reference))
    diffs = []
    if got["pretrained"]["tasks"] != want["pretrained"]["tasks"]:
        diffs.append("round-0 (pretrained) scores")
    for g, w in zip(got["rounds"], want["rounds"], strict=False):
        if g["tasks"] != w["tasks"]:
            diffs.append(f"round {w['round']} scores: {g['tasks']} != {w['tasks']}")
    if [r["round"] for r in got["rounds"]] != [r["round"] for r in want["rounds"]]:
        diffs.append(f"rounds {[r['round'] for r in got['rounds']]} != {[r['round'] for r in want['rounds']]}")
    if sha256(run / "final_encoder.safetensors") != sha256(reference / "final_encoder.safetensors"):
        diffs.append("final_encoder.safetensors bytes")
    return diffs


def wait_for_round(run: Path, round_: int, timeout_s: float, thread: threading.Thread) -> None:
    """Wait until the run's checkpoint is of ``round_`` or later (fails if the run ended or it takes too long)."""
    state = run / "checkpoint.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        if state.is_file() and json.loads(state.read_text())["round"] >= round_:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the drill's run did not checkpoint round {round_} (see the logs in {run.parent.parent})")


def submit(deployment: LoopbackDeployment, config: str, outcome: Outcome, timeout_s: float, log_name: str) -> None:
    """``deployment.run`` into ``outcome`` (for a thread): the status, error, exit code and end time."""
    outcome.status, outcome.output = deployment.run(ROOT, config, timeout_s=timeout_s, log_name=log_name)
    if outcome.status != COMPLETED:
        outcome.error = deployment.failure(outcome.status)
    outcome.flwr_exit_code = deployment.flwr_exit_code
    outcome.ended = time.monotonic()


def make_read_only(folder: Path, read_only: bool) -> None:
    """``chmod a-w`` (``u+w`` to undo); as root, whom modes do not stop, ``chattr +i`` (``-i``)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if read_only else "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555 if read_only else 0o755)


Step = Callable[[LoopbackDeployment, Path], None]  # (deployment, run folder) -> None


def kill_node(deployment: LoopbackDeployment, _: Path) -> None:
    deployment.kill_node(KILLED_TASK)


def restart_node(deployment: LoopbackDeployment, _: Path) -> None:
    deployment.start_node(KILLED_TASK)


def restart_superlink(deployment: LoopbackDeployment, _: Path) -> None:
    deployment.restart_superlink()


def restart_nodes(deployment: LoopbackDeployment, _: Path) -> None:
    deployment.restart_nodes()


def kill_serverapp(deployment: LoopbackDeployment, _: Path) -> None:
    deployment.kill_serverapp()


def lock_folder(_: LoopbackDeployment, run: Path) -> None:
    make_read_only(run, True)


def unlock_folder(_: LoopbackDeployment, run: Path) -> None:
    make_read_only(run, False)


def nothing(_: LoopbackDeployment, __: Path) -> None:
    """No repair needed."""


FAULTS: dict[str, tuple[str, Step, Step]] = {  # name: (what is done, the fault, the repair before resuming)
    "supernode": (f"SuperNode of {KILLED_TASK} killed (SIGKILL) in round 2", kill_node, restart_node),
    "superlink": ("SuperLink restarted (SIGTERM, started again on its port) in round 2", restart_superlink,
                  restart_nodes),
    "serverapp": ("flwr-serverapp killed (SIGKILL) in round 2", kill_serverapp, nothing),
    "read-only": ("run folder made read-only in round 2", lock_folder, unlock_folder),
}


def drill(name: str, workdir: Path, reference: Path, notice_limit_s: float, run_timeout_s: float) -> DrillResult:
    """Run the drill ``name`` (a key of :data:`FAULTS`) in a deployment of its own under ``workdir/name``."""
    fault, inject, repair = FAULTS[name]
    out = workdir / name / "outputs"
    run = out / name
    with LoopbackDeployment(workdir / name / "deploy", TASKS) as deployment:
        first = Outcome()
        thread = threading.Thread(target=submit, args=(deployment, run_config(out, name), first, run_timeout_s,
                                                       "flwr-run.log"))
        thread.start()
        try:
            wait_for_round(run, 1, run_timeout_s, thread)
        finally:
            fault_at = time.monotonic()
            inject(deployment, run)
        thread.join(timeout=notice_limit_s)
        noticed = None if thread.is_alive() else first.ended - fault_at
        if thread.is_alive():  # not noticed: end the run so that the drill can go on
            deployment.kill_serverapp()
            thread.join()
        time.sleep(2.0)
        leftover = len(deployment.kill_serverapp())
        result = DrillResult(name, fault, first.status, first.error, first.flwr_exit_code,
                             None if noticed is None else round(noticed, 1), leftover)
        repair(deployment, run)
        second = Outcome()
        started = time.monotonic()
        submit(deployment, run_config(out, name, "resume=true"), second, run_timeout_s, "flwr-resume.log")
        result.resume_s = round(second.ended - started, 1)
        result.resume_status = second.status if not second.error else f"{second.status}: {second.error}"
        found = re.search(r"resuming .* after round (\d+)", second.output)
        result.resumed_after = int(found.group(1)) if found else None
        result.differences = compare(run, reference)
        result.same_as_uninterrupted = not result.differences
    leftovers = deployment.leftovers()
    if leftovers:
        raise RuntimeError(f"drill {name}: processes left running after the deployment stopped: {leftovers}")
    return result


def table(results: list[DrillResult]) -> str:
    """The drill's results as a Markdown table."""
    lines = ["| fault | run status | error the user sees | `flwr run` exit | time to notice | resume |",
             "|---|---|---|---|---|---|"]
    for r in results:
        noticed = "not within the limit" if r.noticed_s is None else f"{r.noticed_s:.0f} s"
        same = "same results and weights as uninterrupted" if r.same_as_uninterrupted else \
            "differs: " + "; ".join(r.differences)
        resume = (f"{r.resume_status}, resumed after round {r.resumed_after}, {r.resume_s:.0f} s; {same}")
        lines.append(f"| {r.fault} | {r.status} | {r.message or '-'} | {r.flwr_exit_code} | {noticed} | {resume} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".drill", help="folder for the deployments, their logs and outputs")
    parser.add_argument("--drills", nargs="+", default=list(FAULTS), choices=list(FAULTS))
    parser.add_argument("--notice-limit-s", type=float, default=600.0,
                        help="how long to wait for a run to end after its fault before calling it a hang")
    parser.add_argument("--run-timeout-s", type=float, default=1800.0, help="limit of each flwr run")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    reference = uninterrupted(workdir / "reference")
    results = []
    for name in args.drills:
        results.append(drill(name, workdir, reference, args.notice_limit_s, args.run_timeout_s))
        atomic_write_text(workdir / "drill.json", json.dumps([asdict(r) for r in results], indent=2))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    return 0 if all(r.same_as_uninterrupted for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
