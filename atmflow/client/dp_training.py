"""Fine-tuning with example-level differential privacy: DP-SGD through Opacus (``privacy = "dp"``).

Each step (Abadi et al. 2016, Algorithm 1): a Poisson sample of the split (each example independently
with probability ``q``, :class:`~atmflow.privacy.budget.DPBudget`); every example's gradient ``g_i`` of
the cross-entropy of ``head(encoder(x_i))`` is clipped to ``g_i * min(1, C / ||g_i||)`` (``C`` =
``dp-max-grad-norm``, the norm over all fine-tuned tensors together); the update direction is
``(sum_i clip(g_i) + N(0, sigma^2 C^2 I)) / B`` with ``B = batch-size`` (the expected sample size), taken
by the run's optimizer (AdamW or SGD: post-processing, no further privacy cost). Opacus's
``GradSampleModule`` computes the per-example gradients (with ``torch.func``'s vmap: on MobileNetV2 at 64
pixels about 4x a plain step on one CPU thread, where Opacus's own convolution rule is 25x, slowed by the
depthwise convolutions); its ``DPOptimizer`` clips and adds the noise.

BatchNorm. A per-example gradient needs each example's loss to depend on that example only. The encoder's
BatchNorm statistics are frozen already (eval mode, :mod:`atmflow.models.mobilenet`); under DP its affine
weights and biases are frozen too (Opacus computes no per-example gradient for a layer in eval mode and
refuses trainable layers with buffers), so their task-vector entries are exactly 0. Every other tensor
(all convolutions of MobileNetV2) is fine-tuned as without DP.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from logging import INFO

import torch
from flwr.common.logger import log
from torch import nn

from atmflow.client.training import TrainStats, make_optimizer
from atmflow.data.examples import batch_to
from atmflow.data.splits import Split
from atmflow.privacy.budget import DPBudget
from atmflow.protocol import TrainInstructions


@contextlib.contextmanager
def frozen_batchnorm(encoder: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Within the block, BatchNorm affine parameters do not require gradients; yields the parameters that do
    (the ones DP-SGD fine-tunes). Each parameter's ``requires_grad`` is restored on exit."""
    norms = [p for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters(recurse=False) if p.requires_grad]
    for p in norms:
        p.requires_grad_(False)
    try:
        yield [p for p in encoder.parameters() if p.requires_grad]
    finally:
        for p in norms:
            p.requires_grad_(True)


class PrivateStepper:
    """DP-SGD steps on ``encoder`` with ``head`` frozen: per-example clipping to ``budget.max_grad_norm`` and
    Gaussian noise of standard deviation ``budget.noise_multiplier * max_grad_norm`` (module docstring).

    ``noise_seed`` seeds the noise (reproducible runs; Opacus's ``secure_mode`` would draw it from the OS).
    Use as a context manager: on exit the per-example hooks are removed and the encoder is left as a plain
    module holding the fine-tuned weights.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, params: list[nn.Parameter],
                 instructions: TrainInstructions, budget: DPBudget, noise_seed: int) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.head, self.params = head, params
        self.model = GradSampleModule(encoder, loss_reduction="mean", strict=True, force_functorch=True)
        generator = torch.Generator(device=params[0].device).manual_seed(noise_seed)
        self.optimizer = DPOptimizer(make_optimizer(params, instructions), noise_multiplier=budget.noise_multiplier,
                                     max_grad_norm=budget.max_grad_norm, expected_batch_size=instructions.batch_size,
                                     loss_reduction="mean", generator=generator)
        self.loss_fn = nn.CrossEntropyLoss()

    def __enter__(self) -> PrivateStepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model._close()  # removes Opacus's hooks and per-example gradient attributes

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One DP-SGD step on the batch ``(x, y)`` (may be empty: the update is then noise only); returns
        the batch's summed loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if len(y) == 0:
            for p in self.params:  # Opacus's empty-batch path: no example, zero clipped sum, noise only
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            self.optimizer.step()
            return 0.0
        loss = self.loss_fn(self.head(self.model(x)), y)
        with warnings.catch_warnings():  # Opacus's backward hooks fire on outputs only: the inputs need no grad
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()
        return float(loss.item()) * len(y)


def dp_fine_tune(encoder: nn.Module, head: nn.Module, split: Split, instructions: TrainInstructions,
                 device: torch.device, budget: DPBudget, progress: str = "fine-tuning") -> TrainStats:
    """Fine-tune ``encoder`` in place with DP-SGD for ``instructions.epochs`` epochs of
    ``budget.steps_per_epoch`` Poisson-sampled steps each; ``head`` stays frozen. One INFO line per epoch,
    as :func:`atmflow.client.training.fine_tune` logs. The reported loss is the mean loss over the examples
    sampled in the last epoch."""
    start = time.perf_counter()
    encoder.to(device).train()
    head.to(device).eval()
    gen = torch.Generator().manual_seed(instructions.seed)
    n, steps, epoch_loss = len(split), 0, 0.0
    with frozen_batchnorm(encoder) as params:
        dtype = params[0].dtype
        with PrivateStepper(encoder, head, params, instructions, budget, noise_seed=instructions.seed) as stepper:
            for epoch in range(instructions.epochs):
                epoch_start, total, seen = time.perf_counter(), 0.0, 0
                for _ in range(budget.steps_per_epoch):
                    idx = torch.nonzero(torch.rand(n, generator=gen) < budget.sample_rate).flatten()
                    x, y = batch_to(split.x[idx], device, dtype), split.y[idx].to(device)
                    total += stepper.step(x, y)
                    seen += len(idx)
                    steps += 1
                epoch_loss = total / max(seen, 1)
                seconds = time.perf_counter() - epoch_start
                log(INFO, "%s: DP-SGD epoch %d/%d, %d steps, loss %.4f, %.1f examples/s", progress, epoch + 1,
                    instructions.epochs, budget.steps_per_epoch, epoch_loss, seen / max(seconds, 1e-9))
    return TrainStats(epoch_loss, steps, n, time.perf_counter() - start)
