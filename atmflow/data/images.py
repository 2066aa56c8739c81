"""Image batches -> float tensors: the ImageNet preprocessing of the embedded benchmark.

Accepts what the task loaders give: uint8 arrays ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB),
or a list of PIL images (any mode or size; converted to RGB). Each image is scaled to [0, 1],
bilinearly resized (antialiased) to ``size`` x ``size``, given three channels (grey repeated) and
normalised with the ImageNet mean and standard deviation, which the MobileNetV2 backbone expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """float ``[N, C, H, W]`` in [0, 1] -> ``[N, 3, size, size]``."""
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_unit_rgb(images: Any, size: int) -> torch.Tensor:
    """A batch of images (see module docstring) -> float ``[N, 3, size, size]`` in [0, 1]."""
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return _resize(x, size)
    rgb = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    return torch.cat([to_unit_rgb(a[None], size) for a in rgb]) if rgb else torch.empty(0, 3, size, size)


def imagenet_preprocess(images: Any, size: int) -> torch.Tensor:
    """Images -> normalised ``[N, 3, size, size]`` float32 (ImageNet mean / std)."""
    return normalize(to_unit_rgb(images, size), IMAGENET_MEAN, IMAGENET_STD)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a ``[N, 3, H, W]`` batch."""
    return ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).contiguous()
