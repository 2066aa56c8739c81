from __future__ import annotations

import pytest
import torch

from atmflow.merging import add_scaled, mean_merge, task_arithmetic, task_vector


@pytest.fixture
def base() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.5]), "bn.count": torch.tensor(7)}


def test_mean_merge_is_base_plus_alpha_times_mean(base: dict[str, torch.Tensor]) -> None:
    taus = [{"w": torch.tensor([1.0, 0.0, -2.0]), "b": torch.tensor([1.0])},
            {"w": torch.tensor([3.0, 4.0, 0.0]), "b": torch.tensor([-3.0])}]
    merged = mean_merge(base, taus, alpha=0.5)
    assert torch.equal(merged["w"], torch.tensor([2.0, 3.0, 2.5]))  # base + 0.5 * mean = [1, 2, 3] + 0.5 * [2, 2, -1]
    assert torch.equal(merged["b"], torch.tensor([0.0]))  # 0.5 + 0.5 * (-1)
    assert torch.equal(merged["bn.count"], torch.tensor(7))  # not fine-tuned: passes through


def test_task_arithmetic_is_base_plus_lambda_times_sum(base: dict[str, torch.Tensor]) -> None:
    taus = [{"w": torch.tensor([1.0, 0.0, -2.0])}, {"w": torch.tensor([3.0, 4.0, 0.0])}]
    merged = task_arithmetic(base, taus, lam=0.25)
    assert torch.allclose(merged["w"], torch.tensor([2.0, 3.0, 2.5]))
    assert torch.equal(merged["b"], base["b"])


def test_task_vector_round_trip(base: dict[str, torch.Tensor]) -> None:
    finetuned = {**base, "w": torch.tensor([0.0, 2.5, 3.0])}
    tau = task_vector(finetuned, base, ["w"])
    assert list(tau) == ["w"] and torch.equal(add_scaled(base, tau, 1.0)["w"], finetuned["w"])


@pytest.mark.parametrize(
    ("taus", "message"),
    [
        ([{"w": torch.zeros(3)}, {"x": torch.zeros(3)}], "different tensors"),
        ([{"w": torch.zeros(4)}], "tensor 'w' has shape (4,), base has (3,)"),
        ([{"nope": torch.zeros(3)}], "'nope' does not exist in the base"),
        ([{"bn.count": torch.tensor(1)}], "must be floating point"),
        ([], "no task vectors"),
    ],
)
def test_incompatible_vectors_are_rejected(base: dict[str, torch.Tensor], taus: list, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mean_merge(base, taus)
