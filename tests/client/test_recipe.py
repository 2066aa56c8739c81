"""The fine-tuning recipe (learning-rate schedule, warm-up, gradient clipping, training transform): the
literature's for open_clip, checked on the tiny CLIP; the embedded MobileNetV2 recipe unchanged."""

from __future__ import annotations

import math
from typing import Any

import open_clip
import pytest
import torch
from torch import nn

from atmflow.client import training
from atmflow.client.task import local_task
from atmflow.client.training import fine_tune, learning_rate
from atmflow.config import ConfigError, load_config
from atmflow.data.splits import Split
from atmflow.models.clip import _pil
from atmflow.protocol import TrainInstructions
from atmflow.strategies.plan import RunPlan, individual_instructions

TINY_CLIP = {"model-family": "open_clip", "model": "atmflow-tiny-clip", "pretrained": "random",
             "tasks": "digits,mnist", "train-size": 50, "test-size": 20}


def recipe(instructions: TrainInstructions) -> tuple[str, int, float]:
    return instructions.lr_schedule, instructions.warmup_steps, instructions.grad_clip


def test_open_clip_defaults_to_the_literatures_recipe_and_mobilenet_keeps_its_own() -> None:
    clip = load_config({"model-family": "open_clip", "tasks": "cars,dtd", "strategy": "pa-atm"})
    assert recipe(individual_instructions(clip)) == ("cosine", 500, 1.0)  # task_vectors: from the pretrained model
    assert recipe(RunPlan.from_config(clip).instructions) == ("constant", 0, 10.0)  # the ATM code's rounds
    assert recipe(RunPlan.from_config(load_config({**TINY_CLIP, "strategy": "ta"})).instructions) == (
        "cosine", 500, 1.0)
    assert clip.augment
    default = load_config({})
    assert recipe(individual_instructions(default)) == recipe(RunPlan.from_config(default).instructions) == (
        "constant", 0, 0.0)
    assert not default.augment
    set_keys = load_config({"model-family": "open_clip", "tasks": "cars,dtd", "lr-schedule": "cosine",
                            "warmup-steps": 200, "grad-clip": 2.5, "train-transform": "eval"})
    assert recipe(RunPlan.from_config(set_keys).instructions) == recipe(individual_instructions(set_keys)) == (
        "cosine", 200, 2.5)  # paper 004's warm-up, say: a set key applies to every fine-tuning
    assert not set_keys.augment
    with pytest.raises(ConfigError, match="train-transform='augment'.*'mobilenet-v2' has no training transform"):
        load_config({"train-transform": "augment"})


def test_instructions_carry_the_recipe_through_the_record() -> None:
    how = individual_instructions(load_config({"model-family": "open_clip", "tasks": "cars,dtd"}))
    assert TrainInstructions.from_record(how.to_record()) == how


def test_cosine_schedule_is_task_vectors_cosine_lr() -> None:
    """mlfoundations/task_vectors src/utils.py cosine_lr, restated: warm-up lr * (s + 1) / w, then
    0.5 * (1 + cos(pi * e / es)) * lr with e = s - w, es = S - w."""
    how = TrainInstructions(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.1, batch_size=8, full_batch=False,
                            seed=0, lr_schedule="cosine", warmup_steps=5)
    expected = [1e-3 * (s + 1) / 5 if s < 5 else 0.5 * (1 + math.cos(math.pi * (s - 5) / 15)) * 1e-3
                for s in range(20)]
    assert [learning_rate(how, s, 20) for s in range(20)] == pytest.approx(expected)
    assert learning_rate(how, 4, 20) == pytest.approx(1e-3) and learning_rate(how, 5, 20) == pytest.approx(1e-3)
    constant = TrainInstructions(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.1, batch_size=8,
                                 full_batch=False, seed=0)
    assert {learning_rate(constant, s, 20) for s in range(20)} == {1e-3}


def toy_split(n: int = 24) -> Split:
    gen = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def test_fine_tuning_steps_follow_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(training, "make_optimizer", lambda params, how: Recording(params, lr=how.lr))
    how = TrainInstructions(epochs=2, optimizer="sgd", lr=0.1, weight_decay=0.0, batch_size=8, full_batch=False,
                            seed=0, lr_schedule="cosine", warmup_steps=2)
    stats = fine_tune(nn.Linear(6, 4), nn.Linear(4, 3).requires_grad_(False), toy_split(), how, torch.device("cpu"))
    assert stats.steps == 6 and seen == pytest.approx([learning_rate(how, s, 6) for s in range(6)])
    assert seen[1] == pytest.approx(0.1)  # warmed up, then annealed towards 0 at step 6:
    assert seen[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 3 / 4)) / 2)


def test_gradient_norm_is_clipped_before_each_step() -> None:
    """One full-batch SGD step with lr 1: the update is minus the gradient, clipped to norm 0.01."""
    encoder, head = nn.Linear(6, 4), nn.Linear(4, 3).requires_grad_(False)
    before = torch.cat([p.detach().clone().reshape(-1) for p in encoder.parameters()])
    how = TrainInstructions(epochs=1, optimizer="sgd", lr=1.0, weight_decay=0.0, batch_size=8, full_batch=True,
                            seed=0, grad_clip=0.01)
    fine_tune(encoder, head, toy_split(), how, torch.device("cpu"))
    after = torch.cat([p.detach().reshape(-1) for p in encoder.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_tiny_clip_fine_tunes_through_open_clips_training_transform() -> None:
    cfg = load_config(TINY_CLIP)
    train = local_task("digits", cfg).data.train
    assert train.augmented is not None and len(train.augmented) == len(train)
    idx = torch.tensor([0, 3, 7])
    a, b = train.train_batch(idx, seed=5), train.train_batch(idx, seed=5)
    assert torch.equal(a, b) and a.shape == train.x[idx].shape == (3, 3, 32, 32)
    assert not torch.equal(a, train.train_batch(idx, seed=6)) and not torch.equal(a, train.x[idx])
    # exactly open_clip's own training transform (create_model_and_transforms' preprocess_train), seeded alike
    _, preprocess_train, _ = open_clip.create_model_and_transforms("atmflow-tiny-clip", pretrained=None)
    raw = train.augmented.inputs[train.augmented.indices[idx.numpy()]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        expected = torch.stack([preprocess_train(im) for im in _pil(raw)])
    assert torch.equal(a, expected)
    plain = local_task("digits", load_config({**TINY_CLIP, "train-transform": "eval"})).data.train
    assert plain.augmented is None and torch.equal(plain.train_batch(idx, seed=5), plain.x[idx])
