"""Differential privacy (``privacy = "dp"``): the budget's calibration, the per-example clipping of DP-SGD, the
refusals before any training, and a DP PA-ATM run end to end through the in-process grid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from atmflow import protocol
from atmflow.client import app as client_module
from atmflow.client.dp_training import PrivateStepper, frozen_batchnorm
from atmflow.client.privacy import spend
from atmflow.config import ConfigError, load_config
from atmflow.models.mobilenet import pretrained_encoder
from atmflow.privacy.budget import DPBudget, PrivacyBudgetError, client_budget, planned_epochs
from atmflow.sim.local import run_inprocess
from atmflow.strategies.plan import RunPlan, individual_instructions


def test_noise_multiplier_matches_opacus_accountant() -> None:
    cfg = load_config({"privacy": "dp", "dp-epsilon": 8, "rounds": 10, "budget-epochs": 10, "batch-size": 32})
    n = 360
    budget = client_budget(cfg, n)
    steps = (10 * 1 + 10) * math.ceil(n / 32)  # all ATM rounds and the individual fine-tuning compose
    assert planned_epochs(cfg) == 20 and budget.planned_steps == steps
    expected = get_noise_multiplier(target_epsilon=8, target_delta=1 / n, sample_rate=32 / n, steps=steps,
                                    accountant="rdp")
    assert budget.noise_multiplier == pytest.approx(expected) and budget.delta == pytest.approx(1 / n)
    accountant = RDPAccountant()
    accountant.history = [(budget.noise_multiplier, 32 / n, steps)]
    spent = accountant.get_epsilon(delta=1 / n)
    assert budget.epsilon_after(20) == pytest.approx(spent) and 8 - 0.01 <= spent <= 8
    oneshot = load_config({"privacy": "dp", "dp-epsilon": 8, "strategy": "ta", "budget-epochs": 10})
    assert planned_epochs(oneshot) == 10  # one fine-tuning: the individual models are the same task vectors
    given = client_budget(load_config({"privacy": "dp", "dp-noise-multiplier": 1.5, "dp-delta": 1e-4}), n)
    assert (given.noise_multiplier, given.delta) == (1.5, 1e-4)


def test_epsilon_grows_with_rounds_and_the_plan_says_what_came_before() -> None:
    cfg = load_config({"privacy": "dp", "dp-epsilon": 4, "rounds": 5, "epochs-per-round": 2, "budget-epochs": 3})
    budget = client_budget(cfg, 200)
    spent = [budget.epsilon_after(e) for e in range(0, budget.planned_epochs + 1)]
    assert spent[0] == 0 and all(a < b for a, b in zip(spent, spent[1:], strict=False))
    assert spent[-1] <= 4
    plan = RunPlan.from_config(cfg)
    assert [plan.round(k).dp_epochs_before for k in (1, 2, 5)] == [0, 2, 8]
    assert individual_instructions(cfg).dp_epochs_before == 10
    assert set(protocol.DP_METRICS) <= set(plan.required)
    plain = RunPlan.from_config(load_config({"rounds": 5}))
    assert plain.round(3).dp_epochs_before == 0 and not set(protocol.DP_METRICS) & set(plain.required)


def _known_batch() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    encoder, head = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    head.requires_grad_(False)
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 2.0], [4.0, 0.0, 1.0]], dtype=torch.float64)
    return encoder, head, x, torch.tensor([0, 1, 1])


def test_per_example_gradients_are_clipped() -> None:
    """One DP-SGD step without noise, with plain SGD at lr 1: the update is minus the sum of each example's
    gradient clipped to norm C, divided by the batch size (Abadi et al. 2016, Algorithm 1)."""
    encoder, head, x, y = _known_batch()
    per_example = []
    for i in range(len(y)):
        encoder.zero_grad()
        nn.functional.cross_entropy(head(encoder(x[i : i + 1])), y[i : i + 1]).backward()
        per_example.append(torch.cat([p.grad.flatten() for p in encoder.parameters()]))
    bound = 0.05
    norms = torch.stack([g.norm() for g in per_example])
    assert bool((norms > 2 * bound).all())  # every example is clipped
    clipped = sum(g * min(1.0, bound / float(g.norm())) for g in per_example)
    before = torch.cat([p.detach().flatten() for p in encoder.parameters()])
    instructions = protocol.TrainInstructions(1, "sgd", 1.0, 0.0, batch_size=4, full_batch=False, seed=0)
    budget = DPBudget(0.0, 0.5, 1, 1e-3, bound, 1)
    with PrivateStepper(encoder, head, list(encoder.parameters()), instructions, budget, noise_seed=0) as stepper:
        stepper.step(x, y)
    after = torch.cat([p.detach().flatten() for p in encoder.parameters()])
    torch.testing.assert_close(before - after, clipped / 4, atol=1e-6 / 4, rtol=1e-4)
    unclipped = sum(per_example) / 4
    assert not torch.allclose(before - after, unclipped, rtol=1e-2)


def test_noise_has_the_calibrated_scale() -> None:
    """Zero gradients (lr 1, SGD): the update is the noise alone, N(0, (sigma C / B)^2) per entry."""
    encoder, head, x, y = _known_batch()
    instructions = protocol.TrainInstructions(1, "sgd", 1.0, 0.0, batch_size=2, full_batch=False, seed=0)
    budget = DPBudget(3.0, 0.5, 1, 1e-3, 0.5, 1)
    updates = []
    with PrivateStepper(encoder, head, list(encoder.parameters()), instructions, budget, noise_seed=1) as stepper:
        for _ in range(200):
            before = torch.cat([p.detach().flatten() for p in encoder.parameters()])
            stepper.step(x[:0], y[:0])  # an empty Poisson sample: noise only
            updates.append(torch.cat([p.detach().flatten() for p in encoder.parameters()]) - before)
    noise = torch.cat(updates)  # 200 steps x 16 entries
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.1)
    assert float(noise.std()) == pytest.approx(3.0 * 0.5 / 2, rel=0.05)


def test_batchnorm_is_frozen_and_opacus_accepts_the_encoder() -> None:
    from opacus.validators import ModuleValidator

    encoder = pretrained_encoder()
    assert ModuleValidator.validate(encoder, strict=False)  # BatchNorm as is: Opacus refuses it
    with frozen_batchnorm(encoder) as params:
        norms = {id(p) for m in encoder.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
        assert params and not norms & {id(p) for p in params}
        from opacus import GradSampleModule

        GradSampleModule(encoder, strict=True, force_functorch=True)._close()  # no trainable layer with buffers
    assert all(p.requires_grad for p in encoder.parameters())


def test_ledger_refuses_to_train_past_the_budget() -> None:
    budget = DPBudget(1.0, 0.1, 10, 1e-3, 1.0, planned_epochs=3)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    one = protocol.TrainInstructions(1, "adamw", 1e-4, 0.1, 32, False, 0)
    assert [spend(context, budget, one, "mnist") for _ in range(3)] == [1, 2, 3]
    with pytest.raises(PrivacyBudgetError, match="refusing to train past the privacy budget"):
        spend(context, budget, one, "mnist")
    fresh = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})  # e.g. a resumed run
    late = protocol.TrainInstructions(1, "adamw", 1e-4, 0.1, 32, False, 0, dp_epochs_before=2)
    assert spend(fresh, budget, late, "mnist") == 3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"privacy": "secagg+dp"}, "needs exactly one of dp-epsilon"),
    ({"privacy": "secagg+dp", "dp-epsilon": 4, "strategy": "ta", "merge": "ties"}, "only the sum of the task vectors"),
    ({"dp-epsilon": 4}, "dp-epsilon is set but privacy='none'"),
    ({"privacy": "dp"}, "needs exactly one of dp-epsilon"),
    ({"privacy": "dp", "dp-epsilon": 4, "dp-noise-multiplier": 1}, "needs exactly one of dp-epsilon"),
    ({"privacy": "dp", "dp-epsilon": 4, "strategy": "ph-atm"}, "not available with fine-tuning on the validation"),
    ({"privacy": "dp", "dp-epsilon": 4, "strategy": "valft-atm"}, "not available with fine-tuning on the validation"),
    ({"privacy": "dp", "dp-epsilon": 4, "finetune": "talos"}, "finetune = 'talos'"),
    ({"privacy": "dp", "dp-epsilon": 4, "merge": "tatr"}, "tatr-exemplars > 0"),
    ({"privacy": "dp", "dp-epsilon": 4, "full-batch": True}, "full-batch"),
])
def test_config_refusals(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        load_config(overrides)


def test_unmeetable_budget_refuses_before_any_training(tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[str] = []
    monkeypatch.setattr(client_module, "dp_fine_tune", lambda *a, **k: trained.append("dp"))
    monkeypatch.setattr(client_module, "fine_tune", lambda *a, **k: trained.append("plain"))
    with pytest.raises(RuntimeError, match=r"handshake: .*dp-epsilon=0.01 cannot be met.*Set dp-epsilon above"):
        run_inprocess({**tiny, "run-name": "unmeetable", "privacy": "dp", "dp-epsilon": 0.01, "dp-delta": 1e-9})
    assert trained == []
    assert not (Path(tiny["output-dir"]) / "unmeetable" / "results.json").exists()


@pytest.mark.heavy
@pytest.mark.parametrize("privacy", ["dp", "secagg+dp"])
def test_dp_pa_atm_end_to_end(tiny: dict[str, Any], privacy: str) -> None:
    """DP-SGD on every client, with the task vectors sent in the clear (dp) or securely summed (secagg+dp)."""
    run_inprocess({**tiny, "run-name": "dp", "strategy": "pa-atm", "rounds": 2, "budget-epochs": 1,
                   "privacy": privacy, "dp-epsilon": 4})
    folder = Path(tiny["output-dir"]) / "dp"
    out = json.loads((folder / "results.json").read_text())
    tasks = sorted(out["pretrained"]["tasks"])
    first, second = (r["train"] for r in out["rounds"])
    for task in tasks:
        assert 0 < first[task]["dp-epsilon"] < second[task]["dp-epsilon"] < out["individual"]["tasks"][task][
            "dp-epsilon"] <= 4
        assert first[task]["dp-noise-multiplier"] > 0 and first[task]["dp-delta"] == pytest.approx(1 / 90)
    assert out["dp_epsilon"]["round 2"] == {t: second[t]["dp-epsilon"] for t in tasks}
    assert (out["rounds"][0]["geometry"] == {}) == (privacy == "secagg+dp")  # no single vector reached the server
    report = (folder / "report.md").read_text()
    assert "Differential privacy (DP-SGD" in report and "| round 1 |" in report.split("Differential privacy")[1]
    from safetensors.torch import load_file

    final, start = load_file(str(folder / "final_encoder.safetensors")), pretrained_encoder().state_dict()
    assert torch.equal(final["features.1.conv.0.1.weight"], start["features.1.conv.0.1.weight"])  # BatchNorm frozen
    assert not torch.equal(final["features.1.conv.0.0.weight"], start["features.1.conv.0.0.weight"])


def test_the_server_checks_the_privacy_metrics() -> None:
    from atmflow.rounds.exchange import metric_problem

    assert metric_problem(protocol.DP_EPSILON, 3.2) is None and metric_problem(protocol.DP_EPSILON, 0.0) is None
    assert "not finite and >= 0" in str(metric_problem(protocol.DP_EPSILON, -1.0))
    assert "not finite and >= 0" in str(metric_problem(protocol.DP_NOISE_MULTIPLIER, math.inf))
    assert "not in [0, 1]" in str(metric_problem(protocol.DP_DELTA, 1.5))
