"""A real Flower deployment on loopback, as CI runs it without Docker: one ``flower-superlink`` and one
``flower-supernode`` per task as processes on 127.0.0.1, a 2-round PA-ATM submitted with
``flwr run . deploy``; once over TLS with SuperNode authentication and each task bound to its node's key
(``node-keys-file``), once insecure with a SuperNode
killed during round 2 and the run resumed. Every test stops exactly the processes it started (by
PID, in the deployment's ``__exit__``, also when an assertion fails) and checks none is left."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from atmflow.app_config import app_defaults, parse_overrides
from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.deploy.loopback import LoopbackDeployment
from atmflow.server.experiment import run_experiment
from atmflow.sim.inprocess import InProcessGrid

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("digits", "mnist")
SMALL = ("train-size=100 test-size=20 image-size=32 individual=false rounds=2 num-threads=1 "
         f"tasks='{','.join(TASKS)}' node-wait-s=120")


def run_config(out: Path, name: str, extra: str = "") -> str:
    return f"output-dir='{out}' run-name='{name}' {SMALL} {extra}".strip()


def results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def test_pa_atm_over_tls_with_supernode_authentication(tmp_path: Path,
                                                       deployments: list[LoopbackDeployment]) -> None:
    out = tmp_path / "outputs"
    with LoopbackDeployment(tmp_path / "deploy", TASKS, tls=True, auth=True) as deployment:
        deployments.append(deployment)
        # each task bound to its node's key (generate.sh's node-keys.toml): the real grid reports the keys
        keys = f"node-keys-file='{deployment.certs / 'node-keys.toml'}'"
        status, log = deployment.run(ROOT, run_config(out, "tls", keys), timeout_s=900)
        assert status == "finished:completed", log[-3000:]
        registered = deployment.flwr("supernode", "list", "--format", "json", "deploy")
    superlink_log = (deployment.workdir / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in superlink_log
    assert json.loads(registered.stdout)["success"] is True, registered.stdout + registered.stderr
    report = results(out, "tls")
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(sorted(r["tasks"]) == sorted(TASKS) for r in report["rounds"])
    assert sorted(report["pretrained"]["tasks"]) == sorted(TASKS)
    assert (out / "tls" / "final_encoder.safetensors").is_file()
    assert deployment.leftovers() == []
    # the same run in one process (in-process grid, nodes by partition-id) gives the same scores
    cfg = load_config({**app_defaults(ROOT), **parse_overrides(run_config(tmp_path / "inprocess", "tls"))})
    local = run_experiment(InProcessGrid(client_app, cfg.to_run_config(), len(cfg.tasks)), cfg)
    assert report["pretrained"]["tasks"] == local.pretrained
    assert [r["tasks"] for r in report["rounds"]] == [r.tasks for r in local.rounds]


def _wait_for_round(out: Path, name: str, round_: int, timeout_s: float) -> None:
    state = out / name / "checkpoint.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["round"] >= round_:
            return
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint of round {round_} after {timeout_s:.0f} s")


def test_a_supernode_killed_in_round_2_fails_the_run_and_resume_completes_it(
        tmp_path: Path, deployments: list[LoopbackDeployment]) -> None:
    out, name = tmp_path / "outputs", "killed"
    with LoopbackDeployment(tmp_path / "deploy", TASKS) as deployment:
        deployments.append(deployment)
        outcome: dict[str, tuple[str, str]] = {}
        first = threading.Thread(target=lambda: outcome.setdefault(
            "first", deployment.run(ROOT, run_config(out, name, "on-missing-task='fail'"), timeout_s=900)))
        first.start()
        try:
            _wait_for_round(out, name, 1, timeout_s=900)  # round 1 is checkpointed: round 2 is starting
        finally:
            deployment.kill_node("digits")
            first.join(timeout=900)
        status, log = outcome["first"]
        assert status == "finished:failed", log[-3000:]
        assert "round 2 train" in log and "['digits']" in log, log[-3000:]
        assert re.search(r"\bnode 1\b", log) is None, log[-3000:]  # the SuperLink's id, not the dead node
        assert json.loads((out / name / "checkpoint.json").read_text())["round"] == 1
        assert not (out / name / "results.json").exists()

        deployment.start_node("digits")
        status, log = deployment.run(ROOT, run_config(out, name, "on-missing-task='fail' resume=true"),
                                     timeout_s=900, log_name="flwr-resume.log")
        assert status == "finished:completed", log[-3000:]
        assert "resuming" in log and "after round 1" in log
    report = results(out, name)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert sorted(report["rounds"][1]["tasks"]) == sorted(TASKS)
    assert deployment.leftovers() == []
