"""Accuracy and mean cross-entropy of the encoder plus a frozen head on one split."""

from __future__ import annotations

import torch
from torch import nn

from atmflow.data.examples import batch_to
from atmflow.data.splits import Split


@torch.no_grad()
def evaluate(encoder: nn.Module, head: nn.Module, split: Split, device: torch.device,
             batch_size: int = 256) -> tuple[float, float]:
    """Return ``(accuracy, mean loss)`` over the split."""
    encoder.to(device).eval()
    head.to(device).eval()
    correct, loss = 0, 0.0
    dtype = next(encoder.parameters()).dtype
    for i in range(0, len(split), batch_size):
        x, y = batch_to(split.x[i : i + batch_size], device, dtype), split.y[i : i + batch_size].to(device)
        logits = head(encoder(x))
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
    return correct / len(split), loss / len(split)
