"""One real ``flwr run`` local simulation (Ray backend), and proof that it stops what it started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atmflow.processes import processes_with_env
from atmflow.sim.flwr_local import run_simulation

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def test_flwr_run_simulation_smoke(tmp_path: Path) -> None:
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "outputs"
    overrides = (f"output-dir='{out}' run-name='smoke' train-size=100 test-size=20 image-size=32 "
                 "rounds=2 individual=false")
    try:
        code = run_simulation(ROOT, flwr_home, overrides, timeout_s=600)
    finally:
        leftovers = processes_with_env("FLWR_HOME", str(flwr_home))
    assert code == 0
    assert leftovers == [], f"processes left running: {leftovers}"
    results = json.loads((out / "smoke" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert sorted(results["rounds"][-1]["tasks"]) == ["animal-mnist", "digits", "fashion-mnist", "mnist"]
    assert (out / "smoke" / "final_encoder.safetensors").is_file()
