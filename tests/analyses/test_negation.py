"""Task negation and the weight-disentanglement error (paper 004, Section 5, A.1, Eq. 10)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from atmflow.analyses.disentanglement import disentanglement_error, grid_values, plot, predictor, seeded_subset
from atmflow.analyses.finetuned import finetuned_task_vectors
from atmflow.analyses.negation import choose_alpha, negate
from atmflow.client import task as client_task
from atmflow.config import COEFFICIENT_GRID, coefficient_grid, load_config
from atmflow.models.family import get_family


def test_alpha_grid_is_stretched_for_talos() -> None:
    full = coefficient_grid(COEFFICIENT_GRID, "full", 0.9)
    assert full[:3] == (0.0, 0.05, 0.1) and full[-1] == 1.0
    talos = coefficient_grid(COEFFICIENT_GRID, "talos", 0.9)
    assert len(talos) == 21 and talos[-1] == pytest.approx(10.0) and talos[1] == pytest.approx(0.5)


def test_alpha_is_the_lowest_target_accuracy_that_keeps_the_control() -> None:
    curve = [{"alpha": 0.0, "target": 0.9, "control": 0.8}, {"alpha": 0.5, "target": 0.4, "control": 0.78},
             {"alpha": 1.0, "target": 0.4, "control": 0.77}, {"alpha": 1.5, "target": 0.1, "control": 0.5}]
    assert choose_alpha(curve, 0.95 * 0.8)["alpha"] == 1.0  # 1.5 breaks the control; tie -> larger alpha
    assert choose_alpha(curve, 0.79)["alpha"] == 0.0
    with pytest.raises(ValueError, match="control"):
        choose_alpha(curve, 0.99)


def test_disentanglement_error_of_a_known_predictor() -> None:
    """Task 1 predicts 1(x + w > 0) and task 2 a constant: a tau_2 that leaves w alone never changes a
    prediction (xi = 0); one that moves w flips the predictions whose sign changes."""
    x = torch.linspace(-1, 1, 9)

    def predict(delta: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        w = float(delta.get("w", torch.zeros(1)).sum())
        return (x + w > 0).long() if t == 0 else torch.zeros(9, dtype=torch.long)

    alphas = grid_values(5, 1.0)
    zero = torch.zeros(1)
    xi = disentanglement_error(predict, {"w": torch.tensor([0.5]), "u": zero}, {"w": zero, "u": torch.tensor([1.0])},
                               alphas)
    assert torch.equal(xi, torch.zeros(5, 5, dtype=torch.float64))  # tau_2 does not touch w
    xi = disentanglement_error(predict, {"w": torch.tensor([0.5])}, {"w": torch.tensor([1.0])}, alphas)
    assert xi[:, 2].abs().max() == 0  # alpha_2 = 0: nothing added
    # alpha_1 = 0, alpha_2 = 1: task 1's threshold moves by 1 -> x in (-1, 0] flip: 4 of 9 points
    assert xi[2, 4].item() == pytest.approx(4 / 9)


def test_seeded_subset_is_a_random_subset_of_the_test_points() -> None:
    idx = seeded_subset(1000, 50, seed=3)
    assert torch.equal(idx, seeded_subset(1000, 50, seed=3)) and not torch.equal(idx, seeded_subset(1000, 50, seed=4))
    assert len(idx.unique()) == 50 and torch.equal(idx, idx.sort().values) and idx.max() > 100  # not the first 50
    assert torch.equal(seeded_subset(30, 50, seed=3), torch.arange(30))  # fewer points than asked: all of them


def test_disentanglement_predicts_on_the_seeded_subset(tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config({**tiny, "tasks": "digits,mnist", "seed": 3})
    tv = SimpleNamespace(cfg=cfg, pretrained=get_family(cfg).pretrained_encoder().state_dict())
    seen: list[torch.Tensor] = []
    real = client_task.encode
    monkeypatch.setattr(client_task, "encode", lambda enc, x, device: seen.append(x) or real(enc, x, device))
    predictions = predictor(tv, ["digits", "mnist"], 5)({}, 0)
    test = client_task.local_task("digits", cfg).data.test
    idx = seeded_subset(len(test), 5, seed=3)
    assert len(predictions) == 5 and torch.equal(seen[0], test.x[idx])
    assert not torch.equal(idx, torch.arange(5))  # the first 5 test points were the old choice


@pytest.mark.slow  # two data loads per task and real fine-tuning: over the default suite's budget
def test_negation_lowers_the_target_task_and_heatmap(tiny: dict[str, Any], tmp_path: Path) -> None:
    cfg = load_config({**tiny, "tasks": "digits,animal-mnist", "budget-epochs": 3, "individual": False,
                       "train-size": 200, "test-size": 100, "val-fraction": 0.2, "cache-dir": str(tmp_path / "cache")})
    tv = finetuned_task_vectors(cfg)
    result = negate(tv, "digits", "animal-mnist")
    assert result["target_negated"] < result["target_pretrained"] - 0.05  # 100 test images: 5 of them
    assert result["alpha"] > 0
    chosen = next(c for c in result["validation_curve"] if c["alpha"] == result["alpha"])
    assert chosen["control"] >= 0.95 * result["validation_curve"][0]["control"]
    xi = disentanglement_error(predictor(tv, ["digits", "animal-mnist"], 10), tv.vectors["digits"],
                               tv.vectors["animal-mnist"], grid_values(3))
    # alpha_1 = alpha_2 = 0: every model is theta_0, nothing can differ; xi is a sum of two disagreement rates
    assert xi.shape == (3, 3) and xi[1, 1] == 0 and 0 <= xi.min() and xi.max() <= 2
    plot({"full": {"tasks": ["digits", "animal-mnist"], "alphas": grid_values(3), "xi": xi.tolist(),
                   "mean_xi": float(xi.mean())}}, tmp_path / "xi.png")
    assert (tmp_path / "xi.png").stat().st_size > 1000
