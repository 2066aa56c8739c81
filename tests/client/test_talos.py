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


def mlp() -> nn.Module:
    """A model every parameter of which has a gradient (the Toy's attention over one token has none for its
    query and key weights, and those score exactly 0, so TaLoS keeps them first)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Tanh(), nn.LayerNorm(12), nn.Linear(12, 4))


@pytest.mark.parametrize("make", [Toy, mlp])
def test_outside_the_mask_parameters_stay_bit_identical_to_the_base(make: Any) -> None:
    """AdamW with weight decay 0.1 over several steps: frozen entries never move, kept ones with a gradient do."""
    model, split = make(), toy_split()
    mask = calibrate_mask(model, nn.Identity(), split.x[:8], sparsity=0.9, rounds=4, seed=0,
                          device=torch.device("cpu"))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    nn.functional.cross_entropy(model(split.x), split.y).backward()
    moves = {n: p.grad != 0 for n, p in model.named_parameters()}  # entries with a gradient at all
    model.zero_grad()
    how = TrainInstructions(epochs=3, optimizer="adamw", lr=1e-2, weight_decay=0.1, batch_size=8,
                            full_batch=False, seed=0)
    stats = fine_tune(model, nn.Identity(), split, how, torch.device("cpu"), mask)
    assert stats.steps == 9
    after = dict(model.named_parameters())
    for name, p in after.items():
        frozen = ~mask[name] if name in mask else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[frozen], base[name][frozen]), name
        assert p.requires_grad  # the flags are given back after fine-tuning
    # the kept entries are really fine-tuned, except those without any gradient (only weight decay moves them)
    moved = torch.cat([(after[n].detach() != base[n])[mask[n] & moves[n]] for n in mask])
    if make is mlp:
        assert len(moved) > 10 and moved.float().mean() > 0.9


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
        {"finetune": "talos", "talos-rounds": 2}, {"finetune": "talos", "talos-calibration": "unmasked"})}
    assert len(keys) == 5
    # the calibration does not change a full fine-tuning: its key is the one it had before the option existed
    assert cache_key(base, how, "mnist", load_config({"talos-calibration": "unmasked"})) == cache_key(
        base, how, "mnist", load_config({}))
    # the transport encodes the cached task vector afterwards: it does not change the fine-tuning
    assert cache_key(base, how, "mnist", load_config({"transport-dtype": "bfloat16"})) == cache_key(
        base, how, "mnist", load_config({}))


class TwoLayer(nn.Module):
    """logits = W2 tanh(W1 x): small enough to score by hand, and soft-masking W1 changes W2's scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.first = nn.Linear(3, 3, bias=False)
        self.second = nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def hand_scores(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Eq. 7 for ``TwoLayer`` written out: with h = tanh(W1 x), p = softmax(W2 h) and a label y ~ p,
    d log p_y / d W2 = (e_y - p) h^T and d log p_y / d W1 = ((W2^T (e_y - p)) * (1 - h^2)) x^T; the scores
    are the mean of their squares over the examples, flattened as [W1, W2]."""
    x = x.double()
    h = torch.tanh(x @ w1.double().T)
    p = torch.softmax(h @ w2.double().T, dim=-1)
    y = torch.multinomial(p, 1, generator=gen).reshape(-1)
    err = torch.nn.functional.one_hot(y, 2).double() - p
    g2 = err[:, :, None] * h[:, None, :]
    g1 = ((err @ w2.double()) * (1 - h**2))[:, :, None] * x[:, None, :]
    return torch.cat([g1.square().mean(0).reshape(-1), g2.square().mean(0).reshape(-1)])


def bottom(scores: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[torch.argsort(scores)[:count]] = True
    return keep


def test_soft_masked_calibration_matches_a_hand_computed_two_round_example() -> None:
    """Algorithm 1 with R = 2 on 15 weights, sparsity 0.6: round 1 keeps round(0.4^(1/2) * 15) = 9 by the
    scores of theta_0; round 2 scores c * theta_0 (the 6 dropped weights times 0.1, resampled labels) and
    keeps the lowest 6 of the 9. The unmasked variant scores theta_0 again, and here keeps other weights."""
    model, x = TwoLayer().eval(), torch.randn(16, 3, generator=torch.Generator().manual_seed(4))
    w1, w2 = model.first.weight.detach(), model.second.weight.detach()
    gen = torch.Generator().manual_seed(7)
    first = bottom(hand_scores(w1, w2, x, gen), 9)
    c = torch.where(first, 1.0, 0.1)
    second = hand_scores(w1 * c[:9].reshape(3, 3), w2 * c[9:].reshape(2, 3), x, gen)
    second[~first] = float("inf")
    expected = bottom(second, 6)

    def calibrated(calibration: str) -> torch.Tensor:
        mask = calibrate_mask(model, nn.Identity(), x, sparsity=0.6, rounds=2, seed=7, device=torch.device("cpu"),
                              calibration=calibration)
        return torch.cat([mask["first.weight"].reshape(-1), mask["second.weight"].reshape(-1)])

    assert torch.equal(calibrated("soft-masked"), expected)
    assert not torch.equal(calibrated("unmasked"), expected)  # the example tells the two apart


class Unused(nn.Module):
    """A Linear layer first in module order that never touches the output (every score exactly 0)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unused = nn.Linear(10, 10)
        self.used = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


@pytest.mark.parametrize("calibration", ["soft-masked", "unmasked"])
def test_tied_zero_scores_are_drawn_at_random_not_by_module_order(calibration: str) -> None:
    """110 of 125 maskable entries score exactly 0; 10% = 12 are kept. Old rule: the first 12 entries of
    ``unused.weight`` (a stable sort by position). Now: 12 of the tied zeros at random, reproducibly per seed."""
    model, x = Unused(), torch.randn(20, 4, generator=torch.Generator().manual_seed(1))

    def kept(seed: int) -> dict[str, torch.Tensor]:
        return calibrate_mask(model, nn.Identity(), x, sparsity=0.9, rounds=4, seed=seed,
                              device=torch.device("cpu"), calibration=calibration)

    mask = kept(0)
    zeros = torch.cat([mask["unused.weight"].reshape(-1), mask["unused.bias"]])
    assert int(zeros.sum()) == 12 and not mask["used.weight"].any() and not mask["used.bias"].any()
    assert not torch.equal(zeros[:12], torch.ones(12, dtype=torch.bool))  # not the first entries in order
    assert int(zeros[12:].sum()) >= 6 and bool(mask["unused.bias"].any() or zeros[60:].any())
    assert all(torch.equal(mask[k], kept(0)[k]) for k in mask)  # reproducible
    assert any(not torch.equal(mask[k], kept(1)[k]) for k in mask)  # another seed, another draw
