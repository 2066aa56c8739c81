"""Fine-tuning the shared encoder on one task with the task's frozen head.

Loss: cross-entropy of ``head(encoder(x))``. Two regimes:

* mini-batch (default): ``epochs`` passes over the shuffled training split (seeded);
* full-batch (``full-batch = true``): one step per epoch on the gradient of the mean loss over the
  whole training split, accumulated in chunks of ``batch-size``. With plain SGD and one epoch the
  task vector is exactly ``-eta * grad L_t(theta_base)`` (paper 000, Theorem 3.1).

Either regime can be sparse: with a TaLoS mask (paper 004) only the masked-in entries are updated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO

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


def fine_tune(encoder: nn.Module, head: nn.Module, split: Split, instructions: TrainInstructions,
              device: torch.device, mask: Mask | None = None, progress: str = "fine-tuning") -> TrainStats:
    """Fine-tune ``encoder`` in place; ``head`` stays frozen. After every epoch one INFO line through
    Flower's logger: ``<progress>: epoch e/E, steps, loss, examples/s`` (``progress`` names the phase
    and the task, e.g. ``round 2 train, task mnist``).

    With a TaLoS ``mask`` (:func:`atmflow.client.talos.calibrate_mask`) only the masked-in entries
    move; every other parameter stays bit-identical to its value on entry (paper 004, Eq. 8).
    """
    start = time.perf_counter()
    encoder.to(device).train()
    head.to(device).eval()
    sparse = SparseUpdate(encoder, mask) if mask is not None else None
    try:
        params = [p for p in encoder.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, instructions)
        steps, epoch_loss = _run_epochs(encoder, head, split, instructions, device, params, optimizer, sparse,
                                        progress)
    finally:
        if sparse is not None:
            sparse.close()
    return TrainStats(epoch_loss, steps, len(split), time.perf_counter() - start)


def _run_epochs(encoder: nn.Module, head: nn.Module, split: Split, instructions: TrainInstructions,
                device: torch.device, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                sparse: SparseUpdate | None, progress: str = "fine-tuning") -> tuple[int, float]:
    def step() -> None:
        if sparse is not None:
            sparse.mask_gradients()
        optimizer.step()
        if sparse is not None:
            sparse.restore_frozen()

    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    n = len(split)
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
            x, y = batch_to(split.x[idx], device, dtype), split.y[idx].to(device)
            loss = loss_fn(head(encoder(x)), y)
            epoch_loss += loss.item()
            if instructions.full_batch:
                (loss / n).backward()  # accumulate the gradient of the mean over all n examples
                continue
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            step()
            steps += 1
        if instructions.full_batch:
            step()
            steps += 1
        epoch_loss /= n
        seconds = time.perf_counter() - epoch_start
        log(INFO, "%s: epoch %d/%d, %d steps, loss %.4f, %.1f examples/s", progress, epoch + 1,
            instructions.epochs, steps - epoch_steps, epoch_loss, n / max(seconds, 1e-9))
    return steps, epoch_loss
