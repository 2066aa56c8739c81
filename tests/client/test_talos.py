"""TaLoS (paper 004): maskable layers, Fisher scores, mask calibration, the masked update, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from atmflow.client.talos import (
    MASKABLE_MODULES,
    calibrate_mask,
    fisher_diagonal,
    kept_count,
    mask_fraction,
    maskable_keys,
)
from atmflow.client.training import fine_tune
from atmflow.data.splits import Split
from atmflow.protocol import TrainInstructions
from atmflow.sim.local import run_inprocess


class Toy(nn.Module):
    """Embedding-like bare parameter, Conv, BatchNorm, LayerNorm, attention and Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.token = nn.Parameter(torch.randn(4))  # bare parameter (class token / proj): frozen
        self.embed = nn.Embedding(3, 4)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).mean(dim=(2, 3)) + self.token + self.embed.weight[0]
        h = self.norm(h)[:, None]
        return self.fc(self.attn(h, h, h)[0][:, 0])


def toy_split(n: int = 24) -> Split:
    gen = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 1, 6, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen))


def test_maskable_layers_by_module_type() -> None:
    keys = set(maskable_keys(Toy()))
    assert keys == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "norm.weight", "norm.bias",
                    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                    "fc.weight", "fc.bias"}
    assert nn.Embedding not in MASKABLE_MODULES


def test_fisher_is_mean_of_squared_per_example_gradients_with_sampled_labels() -> None:
    """Eq. 7 against a plain loop: one backward per example, same sampled labels."""
    model, head, split = Toy().eval(), nn.Identity(), toy_split(6)
    names = maskable_keys(model)
    got = fisher_diagonal(model, head, split.x, names, torch.Generator().manual_seed(3), torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        probs = torch.softmax(model(split.x).double(), -1)
    labels = torch.multinomial(probs, 1, generator=gen).reshape(-1)
    params = dict(model.named_parameters())
    want = torch.zeros_like(got)
    for i in range(len(split.x)):
        logp = torch.log_softmax(model(split.x[i : i + 1]), -1)[0, labels[i]]
        grads = torch.autograd.grad(logp, [params[n] for n in names])
        want += torch.cat([g.reshape(-1) for g in grads]).double().square()
    torch.testing.assert_close(got, want / len(split.x), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(("sparsity", "rounds"), [(0.9, 4), (0.5, 1), (0.75, 3)])
def test_mask_keeps_exactly_the_requested_fraction(sparsity: float, rounds: int) -> None:
    model = Toy()
    mask = calibrate_mask(model, nn.Identity(), toy_split().x, sparsity=sparsity, rounds=rounds, seed=0,
                          device=torch.device("cpu"))
    total = sum(m.numel() for m in mask.values())
    assert set(mask) == set(maskable_keys(model))
    assert sum(int(m.sum()) for m in mask.values()) == round((1 - sparsity) * total)
    assert mask_fraction(mask) == pytest.approx(1 - sparsity, abs=1 / total)


def test_geometric_schedule_and_kept_parameters_are_the_least_sensitive() -> None:
    assert [kept_count(10_000, 0.9, r, 4) for r in range(1, 5)] == [5623, 3162, 1778, 1000]
    model, x = Toy(), toy_split().x
    mask = calibrate_mask(model, nn.Identity(), x, sparsity=0.5, rounds=1, seed=0, device=torch.device("cpu"))
    names = maskable_keys(model)
    scores = fisher_diagonal(model, nn.Identity(), x, names, torch.Generator().manual_seed(0), torch.device("cpu"))
    kept = torch.cat([mask[n].reshape(-1) for n in names])
    assert scores[kept].max() <= scores[~kept].min()  # one round: the bottom half by Fisher score


def test_outside_the_mask_parameters_stay_bit_identical_to_the_base() -> None:
    """AdamW with weight decay 0.1 over several steps: frozen entries never move, kept ones do."""
    model, split = Toy(), toy_split()
    mask = calibrate_mask(model, nn.Identity(), split.x[:8], sparsity=0.9, rounds=4, seed=0,
                          device=torch.device("cpu"))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    how = TrainInstructions(epochs=3, optimizer="adamw", lr=1e-2, weight_decay=0.1, batch_size=8,
                            full_batch=False, seed=0)
    stats = fine_tune(model, nn.Identity(), split, how, torch.device("cpu"), mask)
    assert stats.steps == 9
    after = dict(model.named_parameters())
    for name, p in after.items():
        frozen = ~mask[name] if name in mask else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[frozen], base[name][frozen]), name
        assert p.requires_grad  # the flags are given back after fine-tuning
    moved = torch.cat([(after[n].detach() != base[n])[mask[n]] for n in mask])
    assert moved.float().mean() > 0.9  # the kept entries are really fine-tuned


@pytest.mark.slow  # two data loads per task and real fine-tuning: over the default suite's budget
def test_talos_pa_atm_end_to_end_sends_sparse_task_vectors(tiny: dict[str, Any]) -> None:
    run = {**tiny, "run-name": "talos", "strategy": "pa-atm", "rounds": 1, "individual": False,
           "finetune": "talos", "talos-rounds": 2, "tasks": "mnist,digits"}
    full = run_inprocess({**run, "run-name": "full", "finetune": "full"})
    talos = run_inprocess(run)
    rec, ref = talos.rounds[0], full.rounds[0]
    for metrics in rec.train.values():
        assert metrics["talos-kept-fraction"] == pytest.approx(0.1, abs=1e-6)
        assert metrics["talos-calibration-s"] > 0
    # indices + values of 10% of the entries: well under a third of the dense float32 bytes
    assert all(rec.bytes_up_per_task[t] < ref.bytes_up_per_task[t] / 3 for t in rec.bytes_up_per_task)
    saved = json.loads((Path(tiny["output-dir"]) / "talos" / "results.json").read_text())
    assert saved["final"]["bytes_per_client_round"] == pytest.approx(sum(rec.bytes_up_per_task.values()) / 2)


def test_cache_key_includes_the_fine_tuning_mode_and_talos_settings() -> None:
    from atmflow.client.cache import cache_key
    from atmflow.config import load_config

    base = {"w": torch.ones(3)}
    how = TrainInstructions(epochs=1, optimizer="adamw", lr=1e-4, weight_decay=0.1, batch_size=8,
                            full_batch=False, seed=0)
    keys = {cache_key(base, how, "mnist", load_config(c)) for c in (
        {}, {"finetune": "talos"}, {"finetune": "talos", "talos-sparsity": 0.8},
        {"finetune": "talos", "talos-rounds": 2})}
    assert len(keys) == 4
    # the transport encodes the cached task vector afterwards: it does not change the fine-tuning
    assert cache_key(base, how, "mnist", load_config({"transport-dtype": "bfloat16"})) == cache_key(
        base, how, "mnist", load_config({}))
