"""The ``privacy`` study at tiny size: its grid, its rows (accuracy, epsilon spent, seconds per step), its
table and figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from atmflow.config import ConfigError
from atmflow.studies import STUDIES, run_study
from atmflow.studies.privacy import Options, plan

RUN_CONFIG = {"train-size": 60, "test-size": 20, "image-size": 32, "tasks": "mnist,digits", "lambda-grid": "0.5,1.0",
              "node-wait-s": 5.0}


def test_the_grid_spends_equal_budgets() -> None:
    specs = plan(Options(budget=3, epsilons="2,inf"), {}, [0, 1])
    assert len(specs) == 8
    private = [s.config() for s in specs if s.overrides.get("privacy") == "dp"]
    assert {(c["strategy"], c["dp-epsilon"], c["individual"]) for c in private} == {("oneshot", 2.0, True),
                                                                                   ("atm", 2.0, False)}
    assert all(c["rounds"] * c["epochs-per-round"] == 3 for c in private if c["strategy"] == "atm")
    with pytest.raises(ConfigError, match="epsilons must be numbers > 0"):
        run_study(STUDIES["privacy"], seeds=[0], root=Path("unused"), options={"epsilons": "0,4"})


@pytest.mark.heavy
def test_privacy_study_end_to_end(tmp_path: Path) -> None:
    outcome = run_study(STUDIES["privacy"], seeds=[0], root=tmp_path, run_config=RUN_CONFIG,
                        options={"budget": 1, "epsilons": "4,inf"})
    assert outcome.runs == 4
    with (outcome.out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    spent = {(r["setting"], r["method"]): float(r["value"]) for r in rows if r["metric"] == "epsilon"}
    assert set(spent) == {(s, m) for s in ("epsilon=4", "no DP") for m in ("TA", "PA-ATM1")}
    assert 3.9 < spent["epsilon=4", "TA"] <= 4 and 3.9 < spent["epsilon=4", "PA-ATM1"] <= 4
    assert spent["no DP", "TA"] == spent["no DP", "PA-ATM1"] == 0
    steps = {(r["setting"], r["method"]) for r in rows if r["metric"] == "s-per-step"}
    assert steps == set(spent)
    report = (outcome.out / "report.md").read_text()
    assert "Average test accuracy against epsilon" in report and "| PA-ATM1 |" in report
    assert (outcome.out / "figures" / "accuracy_per_epsilon.png").stat().st_size > 1000
