"""Accuracy and mean cross-entropy of the encoder plus a frozen head on one split, and the task's
official metric where it is not accuracy (GLUE CoLA, MRPC, QQP), computed on the same predictions."""

from __future__ import annotations

import torch
from torch import nn

from atmflow.data.examples import batch_to
from atmflow.data.glue import GLUE_TASKS, glue_metrics
from atmflow.data.splits import Split


@torch.no_grad()
def predict(encoder: nn.Module, head: nn.Module, split: Split, device: torch.device,
            batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """Return ``(predictions, mean loss)`` over the split: the predicted class of each example (argmax
    of the logits; int64, on the CPU) and the mean cross-entropy."""
    encoder.to(device).eval()
    head.to(device).eval()
    predictions, loss = [], 0.0
    dtype = next(encoder.parameters()).dtype
    for i in range(0, len(split), batch_size):
        x, y = batch_to(split.x[i : i + batch_size], device, dtype), split.y[i : i + batch_size].to(device)
        logits = head(encoder(x))
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        predictions.append(logits.argmax(-1).cpu())
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.int64), loss / len(split)


def evaluate(encoder: nn.Module, head: nn.Module, split: Split, device: torch.device,
             batch_size: int = 256) -> tuple[float, float]:
    """Return ``(accuracy, mean loss)`` over the split."""
    predictions, loss = predict(encoder, head, split, device, batch_size)
    return int((predictions == split.y.cpu()).sum()) / len(split), loss


def official_metric_names(task: str) -> tuple[str, ...]:
    """The names of ``task``'s official metrics besides accuracy (:data:`atmflow.protocol.OFFICIAL_METRICS`):
    ``("matthews",)`` for GLUE CoLA, ``("f1",)`` for MRPC and QQP, ``()`` for every other task."""
    spec = GLUE_TASKS.get(task)
    return () if spec is None or spec.metric == "accuracy" else (spec.metric,)


def official_metrics(task: str, predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The official metrics of ``task`` where they are not accuracy, by name: GLUE CoLA's Matthews
    correlation, MRPC's and QQP's F1 of the positive class (:func:`atmflow.data.glue.glue_metrics`;
    GLUE, Wang et al. 2019, Table 1). Empty for every other task."""
    names = official_metric_names(task)
    if not names:
        return {}
    metrics = glue_metrics(task, predictions.cpu().numpy(), labels.cpu().numpy())
    return {name: metrics[name] for name in names}


def evaluate_task(task: str, encoder: nn.Module, head: nn.Module, split: Split,
                  device: torch.device) -> dict[str, float]:
    """``{"accuracy", "loss"}`` over the split, plus :func:`official_metrics` on the same predictions."""
    predictions, loss = predict(encoder, head, split, device)
    accuracy = int((predictions == split.y.cpu()).sum()) / len(split)
    return {"accuracy": accuracy, "loss": loss, **official_metrics(task, predictions, split.y)}
