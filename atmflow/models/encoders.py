"""Pieces shared by the image-encoder families that wrap another library's model (torchvision, transformers).

:class:`EvalModeEncoder`: fine-tuning keeps every layer in eval mode. BatchNorm running statistics
stay frozen (the tiny per-task data would corrupt them), dropout and stochastic depth are off, so
the training loss is a fixed function of the weights, as Theorem 3.1 of paper 000 assumes (the same
choice as the MobileNetV2 encoder's frozen statistics and the text encoder's disabled dropout).
Gradients flow as usual: eval mode changes only what those layers compute.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


class EvalModeEncoder(nn.Module):
    """An encoder whose sub-layers stay in eval mode under ``train()`` (see module docstring)."""

    def train(self, mode: bool = True) -> EvalModeEncoder:
        super().train(mode)
        for module in self.children():
            module.eval()
        return self


def single_weights_file(folder: Path) -> str | None:
    """The one weights file of a transformers model folder (``*.safetensors`` or ``pytorch_model*.bin``), for
    the run's provenance; None when the weights are split over several files."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    return str(files[0]) if len(files) == 1 else None
