"""The framework-cost benchmark compares equal work: its plain PyTorch loop (no Flower) gives exactly the numbers
and the merged model of the in-process Flower path for one config and seed; and its measuring of a way."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from atmflow.config import load_config
from atmflow.sim.local import run_inprocess
from atmflow.studies.framework_cost import STARTED, Measured, measure, plain_pa_atm, table


@pytest.mark.heavy
def test_the_plain_loop_gives_the_in_process_run_bit_for_bit(tiny: dict[str, Any]) -> None:
    config = {**tiny, "tasks": "digits,mnist", "train-size": 60, "rounds": 2, "individual": True, "budget-epochs": 1,
              "run-name": "same"}
    flower = run_inprocess(config)
    plain = plain_pa_atm(load_config(config))
    assert plain.pretrained == flower.pretrained
    assert plain.rounds == [r.tasks for r in flower.rounds]
    assert plain.individual == flower.individual
    saved = load_file(Path(tiny["output-dir"]) / "same" / "final_encoder.safetensors")
    assert sorted(plain.final) == sorted(saved)
    different = [k for k in saved if not torch.equal(plain.final[k], saved[k])]
    assert different == []
    assert plain.rounds[-1] != plain.pretrained  # the rounds did train: equal work, not no work


@pytest.mark.parametrize(("key", "value"), [("strategy", "oneshot"), ("finetune", "talos"),
                                            ("transport-dtype", "bfloat16"), ("privacy", "secagg")])
def test_the_plain_loop_refuses_what_it_does_not_do(tiny: dict[str, Any], key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"runs PA-ATM only .*'{key}': '{value}'"):
        plain_pa_atm(load_config({**tiny, key: value}))


def test_measure_times_start_up_and_the_whole_run(tmp_path: Path) -> None:
    code = f"import time; time.sleep(0.6); print({STARTED!r}, flush=True); time.sleep(0.6)"
    got = measure("plain", [sys.executable, "-c", code], tmp_path, tmp_path / "plain.log")
    assert got.exit_code == 0 and got.final_sha256 == ""
    assert got.startup_s is not None and 0.5 < got.startup_s < got.wall_s
    assert got.wall_s >= 1.2 and got.peak_rss_mb > 1
    assert STARTED in (tmp_path / "plain.log").read_text()


def test_table_gives_ratios_to_the_plain_loop() -> None:
    rows = [Measured("flwr", 30.0, 10.0, 900.0, 40.0, 0, "a"), Measured("plain", 16.0, 6.0, 500.0, 15.0, 0, "a")]
    text = table(rows)
    assert "| flwr | 30.0 | 10.0 | 20.0 | 2.00x | 1.88x | 900 | 40.0 | yes |" in text
    assert "| plain | 16.0 | 6.0 | 10.0 | 1.00x | 1.00x | 500 | 15.0 | - |" in text
