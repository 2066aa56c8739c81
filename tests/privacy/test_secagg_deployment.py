"""Secure aggregation in a real Flower deployment on loopback: a SuperLink serving TLS with SuperNode
authentication, one SuperNode per task (separate processes), a one-round PA-ATM with privacy = "secagg"
submitted with ``flwr run . deploy``. The SecAgg+ stages are four train exchanges through the SuperLink, and
each SuperNode keeps the protocol's state between them (Flower's node context)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atmflow.deploy.loopback import LoopbackDeployment

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("digits", "mnist", "fashion-mnist")


def test_secagg_pa_atm_over_tls_with_supernode_authentication(tmp_path: Path,
                                                              deployments: list[LoopbackDeployment]) -> None:
    out = tmp_path / "outputs"
    config = (f"output-dir='{out}' run-name='secagg' privacy='secagg' train-size=100 test-size=20 image-size=32 "
              f"individual=false rounds=1 num-threads=1 tasks='{','.join(TASKS)}' node-wait-s=120")
    with LoopbackDeployment(tmp_path / "deploy", TASKS, tls=True, auth=True) as deployment:
        deployments.append(deployment)
        status, log = deployment.run(ROOT, config, timeout_s=900)
        assert status == "finished:completed", log[-3000:]
    assert "Uvicorn running on https://127.0.0.1" in (deployment.workdir / "superlink.log").read_text()
    assert "Secure aggregation completed" in log
    report = json.loads((out / "secagg" / "results.json").read_text())
    (record,) = report["rounds"]
    assert sorted(record["tasks"]) == sorted(TASKS) and record["geometry"] == {}
    assert report["config"]["privacy"] == "secagg"
    # what each node sent over the four stages: the masked vector (int64 entries) and the protocol's keys
    assert all(size > 2_000_000 * 8 for size in record["bytes_up_per_task"].values())
