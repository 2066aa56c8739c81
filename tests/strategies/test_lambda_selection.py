"""One-shot lambda selection (paper 004, A.1): the grid {0, 0.05, ..., 1.0}, stretched by 1 / (1 - sparsity) for
TaLoS task vectors, and the choice by normalized validation accuracy (or, as an option, absolute)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from atmflow import protocol
from atmflow.config import COEFFICIENT_GRID, load_config
from atmflow.rounds.records import Scores
from atmflow.strategies.base import RoundInputs
from atmflow.strategies.oneshot import OneShot
from atmflow.strategies.plan import RunPlan

TASKS = ("mnist", "digits")


def test_talos_task_addition_searches_the_stretched_grid() -> None:
    full = RunPlan.from_config(load_config({"strategy": "ta"}))
    talos = RunPlan.from_config(load_config({"strategy": "ta", "finetune": "talos", "talos-sparsity": 0.9}))
    assert full.lambda_grid == COEFFICIENT_GRID
    assert talos.lambda_grid == pytest.approx([10 * v for v in COEFFICIENT_GRID])  # {0, 0.5, ..., 10}
    ph = RunPlan.ta_start(load_config({"strategy": "ph-atm", "finetune": "talos", "talos-sparsity": 0.8}))
    assert ph.lambda_grid[-1] == pytest.approx(5.0)  # PH-ATM's TA start too


def test_normalized_selection_asks_for_the_fine_tuned_scores_even_without_the_individual_bound() -> None:
    assert RunPlan.from_config(load_config({"strategy": "ta", "individual": False})).instructions.evaluate_finetuned
    absolute = load_config({"strategy": "ta", "individual": False, "lambda-selection": "absolute"})
    assert not RunPlan.from_config(absolute).instructions.evaluate_finetuned


class Curve:
    """An evaluator whose validation accuracies per lambda are given: {lambda: {task: accuracy}}."""

    def __init__(self, curve: dict[float, dict[str, float]]) -> None:
        self.curve = curve

    def __call__(self, weights: Mapping[str, torch.Tensor], split: str, phase: str) -> Scores:
        assert split == "validation"
        lam = float(weights["w"][0])  # base 0 + lambda * tau, tau = 1 (merge 'ta' of one nonzero vector)
        return {t: {"accuracy": a, "loss": 1.0} for t, a in self.curve[round(lam, 6)].items()}


@pytest.mark.parametrize(("selection", "chosen"), [("normalized", 0.5), ("absolute", 1.0)])
def test_the_two_rules_disagree_on_a_constructed_curve(selection: str, chosen: float) -> None:
    """Fine-tuned validation accuracies: mnist 0.5, digits 1.0. lambda 0.5: (0.5, 0.6), absolute mean 0.55,
    normalized (1.0 + 0.6) / 2 = 0.8; lambda 1.0: (0.3, 0.9), absolute 0.6, normalized (0.6 + 0.9) / 2 = 0.75.
    The absolute rule picks 1.0, the normalized one (the paper's) 0.5."""
    cfg = load_config({"strategy": "ta", "tasks": ",".join(TASKS), "lambda-grid": "0.5,1.0",
                       "lambda-selection": selection})
    plan = RunPlan.from_config(cfg)
    curve = {0.5: {"mnist": 0.5, "digits": 0.6}, 1.0: {"mnist": 0.3, "digits": 0.9}}
    strategy = OneShot({1: "mnist", 2: "digits"}, plan, {"w": torch.zeros(1)}, evaluator=Curve(curve))
    vectors = {"mnist": {"w": torch.ones(1)}, "digits": {"w": torch.zeros(1)}}
    train = {t: {protocol.FINETUNED_VALIDATION_ACCURACY: a} for t, a in (("mnist", 0.5), ("digits", 1.0))}
    merged = strategy.merge({"w": torch.zeros(1)}, RoundInputs(1, vectors, {}, {t: 1.0 for t in TASKS}, train))
    assert strategy._extra["lambda"] == chosen and float(merged["w"][0]) == chosen
    expected = {"normalized": {"0.5": 0.8, "1": 0.75}, "absolute": {"0.5": 0.55, "1": 0.6}}[selection]
    assert strategy._extra["lambda_curve"] == pytest.approx(expected)


def test_normalized_selection_names_the_fix_when_every_fine_tuned_model_scores_zero() -> None:
    plan = RunPlan.from_config(load_config({"strategy": "ta", "tasks": ",".join(TASKS), "lambda-grid": "0.5"}))
    strategy = OneShot({1: "mnist", 2: "digits"}, plan, {"w": torch.zeros(1)},
                       evaluator=Curve({0.5: {"mnist": 0.5, "digits": 0.6}}))
    train = {t: {protocol.FINETUNED_VALIDATION_ACCURACY: 0.0} for t in TASKS}
    vectors = {"mnist": {"w": torch.ones(1)}, "digits": {"w": torch.zeros(1)}}
    with pytest.raises(ValueError, match="lambda-selection='absolute'"):
        strategy.merge({"w": torch.zeros(1)}, RoundInputs(1, vectors, {}, {t: 1.0 for t in TASKS}, train))
