"""Checks that CI skips: `pytest -m slow` (minutes) and `pytest -m gpu` (needs CUDA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from atmflow.sim import benchmark
from atmflow.sim.local import run_inprocess


@pytest.mark.slow
def test_benchmark_script_end_to_end(tmp_path: Path) -> None:
    code = benchmark.main(["--seeds", "0", "--workers", "2", "--out", str(tmp_path), "--train-size", "100",
                           "--test-size", "20", "--image-size", "32", "--budget-epochs", "1", "--atm-rounds", "2"])
    assert code == 0
    runs = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(runs["0"]) == {"pretrained", *benchmark.ONESHOT, "PH-ATM1", "PA-ATM1", "PA-ATM2", "individual"}
    assert "| PA-ATM2 |" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clients_fine_tune_on_the_gpu(tiny: dict[str, Any]) -> None:
    res = run_inprocess({**tiny, "run-name": "gpu", "strategy": "ta", "budget-epochs": 1, "lambda-grid": "",
                         "device": "cuda", "individual": False})
    assert res.rounds[0].avg_accuracy > 0
