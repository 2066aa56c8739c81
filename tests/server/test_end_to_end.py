"""The real ServerApp logic and the real ClientApp, end to end through an in-process Grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, MessageType
from safetensors.torch import load_file

from atmflow.client import app as client_module
from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.models.mobilenet import pretrained_encoder
from atmflow.rounds.exchange import TaskFailureError
from atmflow.server.experiment import run_experiment
from atmflow.sim.inprocess import InProcessGrid
from atmflow.sim.local import run_inprocess

TASKS = ["animal-mnist", "digits", "fashion-mnist", "mnist"]


def _results(tiny: dict[str, Any], name: str) -> dict[str, Any]:
    return json.loads((Path(tiny["output-dir"]) / name / "results.json").read_text())


def test_pa_atm_end_to_end(tiny: dict[str, Any]) -> None:
    res = run_inprocess({**tiny, "run-name": "atm", "strategy": "pa-atm", "rounds": 2, "budget-epochs": 2})
    out = _results(tiny, "atm")
    assert (out["strategy"], out["label"], out["config"]["train-size"]) == ("atm", "PA-ATM2", 100)
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    for record in out["rounds"]:
        assert sorted(record["tasks"]) == TASKS
        assert all(0 <= s["accuracy"] <= 1 and s["loss"] > 0 for s in record["tasks"].values())
        assert record["bytes_up"] == sum(record["bytes_up_per_task"].values()) > 4 * 2_000_000 * 4
        assert record["wall_s"] > 0 and all(m["num-examples"] == 90 for m in record["train"].values())
    assert sorted(out["pretrained"]["tasks"]) == TASKS and sorted(out["individual"]["tasks"]) == TASKS
    final = out["final"]
    assert final["avg_accuracy"] == pytest.approx(out["rounds"][-1]["avg_accuracy"])
    expected_norm = sum(final["tasks"][t]["accuracy"] / out["individual"]["tasks"][t]["accuracy"] for t in TASKS) / 4
    assert final["normalized_accuracy"] == pytest.approx(expected_norm)
    report = (Path(tiny["output-dir"]) / "atm" / "report.md").read_text()
    assert "| pretrained |" in report and "| round 2 |" in report and "individual" in report
    assert (Path(tiny["output-dir"]) / "atm" / "accuracy.png").stat().st_size > 1000
    weights = load_file(str(Path(tiny["output-dir"]) / "atm" / "final_encoder.safetensors"))
    assert set(weights) == set(pretrained_encoder().state_dict())
    assert len(res.rounds) == 2


def test_ta_with_lambda_chosen_on_validation(tiny: dict[str, Any]) -> None:
    run_inprocess({**tiny, "run-name": "ta", "strategy": "ta", "budget-epochs": 1, "lambda-grid": "0.1,0.5,1.0"})
    out = _results(tiny, "ta")
    (record,) = out["rounds"]
    curve = record["extra"]["lambda_curve"]
    assert list(curve) == ["0.1", "0.5", "1"]
    best = max(curve.values())
    assert record["extra"]["lambda"] == min(float(k) for k, v in curve.items() if v == best)
    # TA's individual models are the round's own fine-tuned models, tested by each client.
    assert all(record["train"][t]["finetuned-accuracy"] == out["individual"]["tasks"][t]["accuracy"] for t in TASKS)


def test_ta_final_model_is_pretrained_plus_lambda_sum(tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on the task vectors the server received, and check the written final model against them."""
    seen: list[dict[str, torch.Tensor]] = []
    original = client_module.task_vector

    def spy(*args: Any) -> dict[str, torch.Tensor]:
        tau = original(*args)
        seen.append({k: v.clone() for k, v in tau.items()})
        return tau

    monkeypatch.setattr(client_module, "task_vector", spy)
    run_inprocess({**tiny, "run-name": "ta-fixed", "strategy": "ta", "budget-epochs": 1, "merge-lambda": 0.4,
                   "lambda-grid": "", "individual": False})
    assert len(seen) == 4
    base = pretrained_encoder().state_dict()
    final = load_file(str(Path(tiny["output-dir"]) / "ta-fixed" / "final_encoder.safetensors"))
    for key, value in base.items():
        expected = value + 0.4 * sum(t[key] for t in seen) if key in seen[0] else value
        assert torch.allclose(final[key], expected, atol=1e-6), key


class FailOnTrain:
    """The real ClientApp, except that the node holding ``task`` raises on every train message."""

    def __init__(self, task: str, tasks: tuple[str, ...]) -> None:
        self.partition = tasks.index(task)

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == MessageType.TRAIN and context.node_config["partition-id"] == self.partition:
            raise RuntimeError("disk on fire")
        return client_app(message, context)


def test_a_failing_client_is_named_and_never_merged(tiny: dict[str, Any]) -> None:
    cfg = load_config({**tiny, "run-name": "fail", "rounds": 1, "individual": False})
    grid = InProcessGrid(FailOnTrain("digits", cfg.tasks), cfg.to_run_config(), len(cfg.tasks))  # type: ignore[arg-type]
    with pytest.raises(TaskFailureError) as err:
        run_experiment(grid, cfg)
    assert err.value.problems.keys() == {"digits"}
    assert "disk on fire" in str(err.value) and "round 1 train" in str(err.value)
    assert not (Path(tiny["output-dir"]) / "fail" / "final_encoder.safetensors").exists()
