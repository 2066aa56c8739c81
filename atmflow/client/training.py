"""Fine-tuning the shared encoder on one task with the task's frozen head.

Loss: cross-entropy of ``head(encoder(x))``. Two regimes:

* mini-batch (default): ``epochs`` passes over the shuffled training split (seeded);
* full-batch (``full-batch = true``): one step per epoch on the gradient of the mean loss over the
  whole training split, accumulated in chunks of ``batch-size``. With plain SGD and one epoch the
  task vector is exactly ``-eta * grad L_t(theta_base)`` (paper 000, Theorem 3.1).

Either regime can be sparse: with a TaLoS mask (paper 004) only the masked-in entries are updated.

The recipe (``lr-schedule``, ``warmup-steps``, ``grad-clip``, ``train-transform``; the literature's for
open_clip, :mod:`atmflow.models.registry`), as the task_vectors code (``src/finetune.py``) does it:

* learning rate of optimizer step ``s`` (0-based) of ``S`` (:func:`learning_rate`): ``constant``: ``lr``;
  ``cosine``: ``lr * (s + 1) / w`` during ``w`` warm-up steps, then ``lr * (1 + cos(pi * (s - w) / (S - w))) / 2``
  (``cosine_lr``: warm-up, then cosine annealing to 0 at the last step);
* the gradient's global norm clipped at ``grad-clip`` before each step (``clip_grad_norm_``; 0 = none;
  with a TaLoS mask, before the mask zeroes the frozen entries' gradients, as TaLoS clips before its
  masked optimizer steps);
* a split with a training transform gives each batch through it, seeded by the batch's position
  (:meth:`atmflow.data.splits.Split.train_batch`): reproducible, and new crops every epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.common.logger import log
from torch import nn

from atmflow.client.talos import Mask, SparseUpdate
from atmflow.data.examples import batch_to
from atmflow.data.splits import Split
from atmflow.protocol import TrainInstructions


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over the last epoch
    steps: int
    examples: int
    seconds: float


def make_optimizer(params: list[nn.Parameter], instructions: TrainInstructions) -> torch.optim.Optimizer:
    if instructions.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=instructions.lr, weight_decay=instructions.weight_decay)
    if instructions.optimizer == "sgd":
        return torch.optim.SGD(params, lr=instructions.lr, weight_decay=instructions.weight_decay)
    raise ValueError(f"unknown optimizer {instructions.optimizer!r}; allowed: adamw, sgd")


def learning_rate(instructions: TrainInstructions, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps`` (see module docstring)."""
    lr, warmup = instructions.lr, instructions.warmup_steps
    if instructions.lr_schedule == "constant":
        return lr
    if instructions.lr_schedule != "cosine":
        raise ValueError(f"unknown lr-schedule {instructions.lr_schedule!r}; allowed: constant, cosine")
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1))) * lr


def fine_tune(encoder: nn.Module, head: nn.Module, split: Split, instructions: TrainInstructions,
              device: torch.device, mask: Mask | None = None, progress: str = "fine-tuning",
              on_epoch: Callable[[int], None] | None = None) -> TrainStats:
    """Fine-tune ``encoder`` in place; ``head`` stays frozen. After every epoch one INFO line through
    Flower's logger: ``<progress>: epoch e/E, steps, loss, examples/s`` (``progress`` names the phase
    and the task, e.g. ``round 2 train, task mnist``).

    With a TaLoS ``mask`` (:func:`atmflow.client.talos.calibrate_mask`) only the masked-in entries
    move; every other parameter stays bit-identical to its value on entry (paper 004, Eq. 8).
    ``on_epoch(e)`` is called after epoch ``e`` (1-based), e.g. to read the weights along the way
    (:mod:`atmflow.analyses.epoch_gradients`).
    """
    start = time.perf_counter()
    encoder.to(device).train()
    head.to(device).eval()
    sparse = SparseUpdate(encoder, mask) if mask is not None else None
    try:
        params = [p for p in encoder.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, instructions)
        steps, epoch_loss = _run_epochs(encoder, head, split, instructions, device, params, optimizer, sparse,
                                        progress, on_epoch)
    finally:
        if sparse is not None:
            sparse.close()
    return TrainStats(epoch_loss, steps, len(split), time.perf_counter() - start)


def _stepper(instructions: TrainInstructions, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             sparse: SparseUpdate | None, total: int, progress: str) -> Callable[[int], None]:
    """``step(index)``: optimizer step ``index`` of ``total`` with the recipe's learning rate and clipping,
    and the TaLoS mask (see module docstring)."""
    if instructions.lr_schedule == "cosine" and instructions.warmup_steps >= total:
        log(WARNING, "%s: %d warm-up steps but only %d steps in all: the learning rate peaks at %.3g, not lr %.3g "
            "(set warmup-steps lower)", progress, instructions.warmup_steps, total,
            learning_rate(instructions, total - 1, total), instructions.lr)

    def step(index: int) -> None:
        if instructions.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(instructions, index, total)
        if instructions.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, instructions.grad_clip)
        if sparse is not None:
            sparse.mask_gradients()
        optimizer.step()
        if sparse is not None:
            sparse.restore_frozen()

    return step


def _run_epochs(encoder: nn.Module, head: nn.Module, split: Split, instructions: TrainInstructions,
                device: torch.device, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                sparse: SparseUpdate | None, progress: str = "fine-tuning",
                on_epoch: Callable[[int], None] | None = None) -> tuple[int, float]:
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    n = len(split)
    total = instructions.epochs * (1 if instructions.full_batch else math.ceil(n / instructions.batch_size))
    step = _stepper(instructions, optimizer, params, sparse, total, progress)
    gen = torch.Generator().manual_seed(instructions.seed)
    dtype = params[0].dtype
    steps, epoch_loss = 0, 0.0
    for epoch in range(instructions.epochs):
        epoch_start, epoch_steps = time.perf_counter(), steps
        epoch_loss = 0.0
        order = torch.arange(n) if instructions.full_batch else torch.randperm(n, generator=gen)
        if instructions.full_batch:
            optimizer.zero_grad(set_to_none=True)
        for i in range(0, n, instructions.batch_size):
            idx = order[i : i + instructions.batch_size]
            inputs = split.train_batch(idx, seed=instructions.seed * 1_000_003 + epoch * n + i)
            x, y = batch_to(inputs, device, dtype), split.y[idx].to(device)
            loss = loss_fn(head(encoder(x)), y)
            epoch_loss += loss.item()
            if instructions.full_batch:
                (loss / n).backward()  # accumulate the gradient of the mean over all n examples
                continue
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            step(steps)
            steps += 1
        if instructions.full_batch:
            step(steps)
            steps += 1
        epoch_loss /= n
        seconds = time.perf_counter() - epoch_start
        log(INFO, "%s: epoch %d/%d, %d steps, loss %.4f, %.1f examples/s", progress, epoch + 1,
            instructions.epochs, steps - epoch_steps, epoch_loss, n / max(seconds, 1e-9))
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return steps, epoch_loss
