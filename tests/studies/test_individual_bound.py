"""The individual upper bound of a row has the row's budget: PA-ATM30 is normalized by 30-epoch individual models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atmflow.studies.methods import oneshot, pa_atm, ph_atm
from atmflow.studies.original_settings import Options, plan
from atmflow.studies.runner import INDIVIDUAL, Pick, bound_key, individual_bounds, normalized_rows, pick_epochs


def scores(a: float, b: float) -> dict[str, dict[str, float]]:
    return {"mnist": {"accuracy": a, "loss": 1.0}, "digits": {"accuracy": b, "loss": 1.0}}


def test_the_pa_atm30_row_reads_individual_models_fine_tuned_for_30_epochs() -> None:
    specs = plan(Options(budget=10, long_rounds=30, methods=("TA",)), {}, [0])
    pa = next(s for s in specs if any(p.method == "PA-ATM30" for p in s.picks))
    config = pa.config()
    assert config["rounds"] == 30 and config["budget-epochs"] == 30  # the run fine-tunes 30-epoch individual models
    pa30 = next(p for p in pa.picks if p.method == "PA-ATM30")
    pa10 = next(p for p in pa.picks if p.method == "PA-ATM10")
    assert pick_epochs(config, pa30) == 30 and pick_epochs(config, pa10) == 10
    assert bound_key(config, 30) == bound_key(config, int(config["budget-epochs"]))
    ta = next(s for s in specs if any(p.method == "TA" for p in s.picks))  # carries the 10-epoch individual row
    assert INDIVIDUAL in [p.method for p in ta.picks] and ta.config()["budget-epochs"] == 10
    assert bound_key(config, 10) == bound_key(ta.config(), 10)  # PA-ATM10 divides by the one-shot run's models


def test_normalized_accuracy_divides_by_the_individual_models_of_the_rows_budget(tmp_path: Path) -> None:
    base: dict[str, Any] = {"tasks": "mnist,digits"}
    ta = oneshot("TA", 10, 0, base, "s", with_bounds=True)
    pa = pa_atm(30, 1, 0, base, [Pick("PA-ATM10", "s", 10), Pick("PA-ATM30", "s", 30), Pick("PA-ATM5", "s", 5)])
    ta_results = {"pretrained": {"tasks": scores(0.5, 0.5)}, "individual": {"tasks": scores(0.8, 0.5)},
                  "rounds": [{"round": 1, "tasks": scores(0.6, 0.4)}]}
    pa_results = {"pretrained": {"tasks": scores(0.5, 0.5)}, "individual": {"tasks": scores(0.9, 1.0)},
                  "rounds": [{"round": r, "tasks": scores(0.4 + r / 100, 0.45)} for r in (5, 10, 30)]}
    ph = ph_atm(10, 0, base, [Pick("PH-ATM10", "s", 10)])  # its individual models: its TA start's (round 0 seed)
    ph_results = {"pretrained": {"tasks": scores(0.5, 0.5)}, "individual": {"tasks": scores(0.7, 0.7)},
                  "rounds": [{"round": 10, "tasks": scores(0.7, 0.35)}]}
    bounds = individual_bounds([(ta, ta_results), (ph, ph_results), (pa, pa_results)])
    assert len(bounds) == 2  # 10 and 30 epochs; PH-ATM's TA-start models are not the one-shot run's
    assert [r.value for r in normalized_rows("x", ph, tmp_path, ph_results, bounds)] == pytest.approx([0.75])
    got = {r.method: r.value for r in normalized_rows("x", pa, tmp_path, pa_results, bounds)}
    assert got["PA-ATM10"] == pytest.approx((0.5 / 0.8 + 0.45 / 0.5) / 2)  # the 10-epoch (one-shot run's) models
    assert got["PA-ATM30"] == pytest.approx((0.7 / 0.9 + 0.45 / 1.0) / 2)  # its own 30-epoch models, not 10
    assert "PA-ATM5" not in got  # no individual models at 5 epochs: no ratio to another budget's
    ta_rows = {r.method: r.value for r in normalized_rows("x", ta, tmp_path, ta_results, bounds)}
    assert ta_rows == pytest.approx({"TA": (0.6 / 0.8 + 0.4 / 0.5) / 2, "pretrained": (0.5 / 0.8 + 1.0) / 2,
                                     "individual": 1.0})
