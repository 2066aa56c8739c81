from __future__ import annotations

import pytest
import torch

from atmflow.config import load_config
from atmflow.rounds.geometry import task_vector_geometry
from atmflow.strategies.merge_step import MergeStep
from atmflow.strategies.plan import RunPlan


def test_geometry_matches_flattened_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    vectors = {t: {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)} for t in "xyz"}
    geo = task_vector_geometry(vectors)
    flat = {t: torch.cat([v["a"].flatten(), v["b"]]).double() for t, v in vectors.items()}
    for s in "xyz":
        assert abs(geo["norms"][s] - torch.linalg.norm(flat[s]).item()) < 1e-12
        for t in "xyz":
            expected = torch.nn.functional.cosine_similarity(flat[s], flat[t], dim=0).item()
            assert abs(geo["cosine"][s][t] - expected) < 1e-12
    pairs = [abs(geo["cosine"][a][b]) for a, b in (("x", "y"), ("x", "z"), ("y", "z"))]
    assert abs(geo["mean_abs_cosine"] - sum(pairs) / 3) < 1e-12


def test_orthogonal_vectors_have_zero_cosine() -> None:
    geo = task_vector_geometry({"a": {"w": torch.tensor([1.0, 0.0])}, "b": {"w": torch.tensor([0.0, 2.0])}})
    assert geo["cosine"]["a"]["b"] == 0.0 and geo["norms"] == {"a": 1.0, "b": 2.0}


def test_example_weighted_mean_is_fedavg() -> None:
    base = {"w": torch.zeros(2)}
    vectors = {"a": {"w": torch.tensor([1.0, 0.0])}, "b": {"w": torch.tensor([0.0, 1.0])}}
    sizes = {"a": 30.0, "b": 10.0}
    uniform = MergeStep("mean", {"alpha": 1.0}).apply(base, vectors, sizes)
    weighted = MergeStep("mean", {"alpha": 1.0}, "examples").apply(base, vectors, sizes)
    assert torch.allclose(uniform["w"], torch.tensor([0.5, 0.5]))
    assert torch.allclose(weighted["w"], torch.tensor([0.75, 0.25]))  # sum_t n_t tau_t / sum_t n_t


def test_scale_override_replaces_lambda() -> None:
    base = {"w": torch.zeros(1)}
    vectors = {"a": {"w": torch.ones(1)}, "b": {"w": torch.ones(1)}}
    step = MergeStep("ta", {"lam": 0.3})
    assert torch.allclose(step.apply(base, vectors, {"a": 1.0, "b": 1.0})["w"], torch.tensor([0.6]))
    assert torch.allclose(step.apply(base, vectors, {"a": 1.0, "b": 1.0}, scale=1.0)["w"], torch.tensor([2.0]))


def test_dare_draws_new_masks_each_round() -> None:
    base = {"w": torch.zeros(1000)}
    vectors = {"a": {"w": torch.ones(1000)}, "b": {"w": torch.ones(1000)}}
    step = MergeStep("dare", {"p": 0.5, "seed": 0, "lam": 1.0})
    one, two = (step.apply(base, vectors, {"a": 1.0, "b": 1.0}, round_=r)["w"] for r in (1, 2))
    assert not torch.equal(one, two)
    assert torch.equal(one, step.apply(base, vectors, {"a": 1.0, "b": 1.0}, round_=1)["w"])


def test_normalized_accuracy_leaves_out_tasks_whose_individual_model_scores_zero() -> None:
    import math

    from atmflow.rounds.records import normalized_accuracy

    scores = {"a": {"accuracy": 0.4, "loss": 1.0}, "b": {"accuracy": 0.3, "loss": 1.0}}
    assert normalized_accuracy(scores, {"a": {"accuracy": 0.8, "loss": 1.0}, "b": {"accuracy": 0.0, "loss": 1.0}}) \
        == 0.5
    assert math.isnan(normalized_accuracy(scores, {"a": {"accuracy": 0.0, "loss": 1.0}}))


@pytest.mark.parametrize("merge", ["mean", "ta", "breadcrumbs", "dare", "tatr", "ties"])
def test_atm_applies_every_operator_as_a_mean_with_scaling_one(merge: str) -> None:
    """Paper 000, Sec. 6.1: inside ATM every operator is a mean over the tasks with scaling 1. Four known task
    vectors whose entries every operator keeps (equal magnitudes, one sign, no trust-region conflict: the
    fraction excluded is 0): the round's model must be base + mean(tau) = base + (1, 2), not TA's default
    0.3 x sum = base + (1.2, 2.4)."""
    cfg = load_config({"strategy": "atm", "merge": merge, "breadcrumbs-beta": 0.0, "breadcrumbs-gamma": 1.0,
                       "dare-p": 0.0, "tatr-trust-fraction": 0.0, "ties-k": 1.0})
    step = RunPlan.from_config(cfg).merge_step
    base = {"w": torch.tensor([10.0, 20.0])}
    vectors = {t: {"w": torch.tensor([1.0, 2.0])} for t in "abcd"}
    merged = step.apply(base, vectors, dict.fromkeys("abcd", 1.0))
    assert torch.allclose(merged["w"], torch.tensor([11.0, 22.0]))
    explicit = RunPlan.from_config(load_config({**cfg.to_run_config(), "merge-lambda": 0.5})).merge_step
    assert explicit.step_scale(4) is None  # merge-lambda set: used as given
    oneshot = RunPlan.from_config(load_config({"strategy": "oneshot", "merge": merge})).merge_step
    assert oneshot.step_scale(4) is None  # one-shot: lambda from the grid, or the operator's default


def test_atm_mean_step_scales_with_the_tasks_that_delivered() -> None:
    """TA inside ATM: 1 / n for the n task vectors of the round (one task skipped: 1 / 3)."""
    step = RunPlan.from_config(load_config({"strategy": "pa-atm", "merge": "ta"})).merge_step
    assert step.step_scale(4) == 0.25 and step.step_scale(3) == pytest.approx(1 / 3)
    assert RunPlan.from_config(load_config({"strategy": "pa-atm"})).merge_step.step_scale(8) == 1.0  # mean: alpha 1
