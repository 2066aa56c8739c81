"""Paper 000, Theorem 3.1 and Corollary 3.1.1, checked through the real client and server.

With one epoch of full-batch plain gradient descent (lr eta), each client's task vector is
``tau_t = -eta * grad L_t(theta_0)``, so the TA-merged model is
``theta_0 + lambda * sum_t tau_t = theta_0 - lambda * eta * grad sum_t L_t(theta_0)``:
one gradient step on the sum of the task losses with learning rate ``lambda * eta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from atmflow.client.task import local_task
from atmflow.config import load_config
from atmflow.models.mobilenet import pretrained_encoder, trainable_keys
from atmflow.sim.local import run_inprocess

ETA, LAM = 0.5, 0.3


def total_loss_gradient(cfg_overrides: dict[str, Any]) -> dict[str, torch.Tensor]:
    """grad of sum_t L_t at the pretrained weights, in float64, computed independently of the client."""
    cfg = load_config(cfg_overrides)
    encoder = pretrained_encoder().double().train()
    loss = torch.zeros((), dtype=torch.float64)
    for task in cfg.tasks:
        local = local_task(task, cfg)
        head = local.head
        logits = head(encoder(local.data.train.x.double()))
        loss = loss + torch.nn.functional.cross_entropy(logits, local.data.train.y)  # mean over the split
    grads = torch.autograd.grad(loss, [p for _, p in encoder.named_parameters()])
    return dict(zip([n for n, _ in encoder.named_parameters()], grads, strict=True))


@pytest.mark.heavy
def test_ta_after_one_full_batch_gd_epoch_is_one_gradient_step(tiny: dict[str, Any]) -> None:
    overrides = {**tiny, "run-name": "theorem", "strategy": "ta", "budget-epochs": 1, "optimizer": "sgd",
                 "lr": ETA, "weight-decay": 0.0, "full-batch": True, "batch-size": 16, "merge-lambda": LAM,
                 "lambda-grid": "", "individual": False, "precision": "float64"}
    run_inprocess(overrides)  # float64: float32 gradients of a deep CNN differ by ~1e-4 relative
    base = pretrained_encoder().double().state_dict()
    merged = load_file(str(Path(tiny["output-dir"]) / "theorem" / "final_encoder.safetensors"))
    grad = total_loss_gradient(overrides)
    keys = trainable_keys(pretrained_encoder())
    got = torch.cat([(merged[k].double() - base[k].double()).flatten() for k in keys])
    expected = torch.cat([(-LAM * ETA * grad[k]).flatten() for k in keys])
    rel = (got - expected).norm() / expected.norm()
    # float64 end to end (the task vectors travel exactly: transport-dtype "exact"); float32 transport
    # would round them and leave ~2e-8
    assert rel < 1e-12, f"relative error {rel:.2e}"
    print(f"Theorem 3.1: relative error {rel:.1e}")
    assert all(torch.equal(merged[k], base[k]) for k in base if k not in keys)  # frozen buffers untouched
