"""``model-family = "torchvision"``: any torchvision classification model as the shared encoder.

``model`` is a torchvision classification model name (``torchvision.models.list_models(module=
torchvision.models)``: ``resnet18``, ``resnet50``, ``convnext_tiny``, ``efficientnet_b0``,
``mobilenet_v3_small``, ``vit_b_16``, ``swin_t``, ...). The encoder is that model with its final
classification layer (the last ``nn.Linear``: ResNet's ``fc``, ViT's ``heads.head``, ConvNeXt's
``classifier.2``, ...) replaced by the identity: images ``[N, 3, S, S]`` -> features
``[N, in_features]`` of that layer. Every other parameter is fine-tuned, sent and merged. Models
without a final linear layer (SqueezeNet) are refused. All layers stay in eval mode
(:class:`~atmflow.models.encoders.EvalModeEncoder`: frozen BatchNorm statistics, no dropout).

Weights (``pretrained``), never downloaded:

* the path of a weights file: the model's state dict as ``torch.save(model.state_dict(), path)``
  writes it. The final layer's tensors, for any number of classes, are ignored; every other tensor
  must be there and fit (strict load);
* a torchvision weights name of the model (``DEFAULT``, ``IMAGENET1K_V1``, ...:
  ``torchvision.models.get_model_weights(model)``), read from the local torch cache
  (``torch.hub.get_dir()/checkpoints``, where torchvision keeps what it downloads); a missing file
  raises :class:`WeightsUnavailableError` with the command that fetches it on a machine with network.

Images get the ImageNet preprocessing at ``image-size`` pixels (:func:`atmflow.data.images.imagenet_preprocess`;
models with a fixed input size, such as ``vit_b_16``, need ``image-size = 224``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atmflow.data.images import imagenet_preprocess
from atmflow.models.encoders import EvalModeEncoder
from atmflow.models.family import ModelFamily
from atmflow.models.registry import WeightsUnavailableError, closest
from atmflow.paths import is_local_path


def model_names() -> list[str]:
    """Every torchvision classification model name."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def check_model_name(model: str) -> None:
    if model not in model_names():
        raise ValueError(f"unknown torchvision classification model {model!r} (run config key model)"
                         f"{closest(model, model_names())}; all: torchvision.models.list_models(module="
                         "torchvision.models)")


def final_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the model's final classification layer (its last ``nn.Linear``)."""
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"torchvision model {type(model).__name__} has no final linear classification layer to "
                         "remove; use a model with one (resnet18, convnext_tiny, vit_b_16, ...)")
    return linear[-1]


class TorchvisionEncoder(EvalModeEncoder):
    """A torchvision classifier without its final layer: images -> that layer's input features."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import torchvision

        self.model = torchvision.models.get_model(name)
        head, layer = final_layer(self.model)
        self.head_name, self.feature_dim = head, int(layer.in_features)
        parent, _, attr = head.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, attr, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def fetch_command(model: str, weights: str) -> str:
    return f"python -c \"import torchvision; torchvision.models.get_model({model!r}, weights={weights!r})\""


def weights_path(model: str, pretrained: str) -> Path:
    """The local file holding ``model``'s ``pretrained`` weights (a path, or a torchvision weights name found in
    the torch cache); raises :class:`WeightsUnavailableError` naming where it looked and how to fetch it."""
    check_model_name(model)
    if is_local_path(pretrained) or pretrained.endswith((".pt", ".pth")):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"torchvision weights file {path} not found (run config key pretrained); "
                                          f"save one with torch.save(model.state_dict(), {str(path)!r})")
        return path
    import torchvision

    enum = torchvision.models.get_model_weights(model)
    names = ["DEFAULT", *enum.__members__]
    if pretrained not in names:
        raise ValueError(f"pretrained={pretrained!r} is neither a weights file nor a torchvision weights name of "
                         f"{model!r}{closest(pretrained, names)}; names: {', '.join(names)}")
    url = enum[pretrained].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"torchvision weights {model} {pretrained} are not in the local torch cache ({path}); nothing is "
            f"downloaded at run time. Fetch them on a machine with network with: {fetch_command(model, pretrained)} "
            "(then copy the file into this machine's torch cache, TORCH_HOME/hub/checkpoints, or set pretrained to "
            "its path)")
    return path


@lru_cache(maxsize=2)
def pretrained_state(model: str, pretrained: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors from the weights file (the final layer's left out), checked to fit exactly."""
    path = weights_path(model, pretrained)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported with its path
        raise WeightsUnavailableError(f"cannot read torchvision weights file {path}: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} is not a state dict of tensors; save one with "
                                      "torch.save(model.state_dict(), path)")
    encoder = TorchvisionEncoder(model)
    head = encoder.head_name + "."
    kept = {f"model.{k}": v for k, v in state.items() if not k.startswith(head)}
    expected = encoder.state_dict()
    missing, extra = sorted(set(expected) - set(kept)), sorted(set(kept) - set(expected))
    wrong = [k for k in set(expected) & set(kept) if expected[k].shape != kept[k].shape]
    if missing or extra or wrong:
        raise WeightsUnavailableError(
            f"the weights in {path} do not fit torchvision model {model!r}: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, other shapes {sorted(wrong)[:3]} (is it the state dict of this model?)")
    return kept


class TorchvisionFamily(ModelFamily):
    """See module docstring."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        check_model_name(self.model)

    def check_available(self) -> None:
        pretrained_state(self.model, self.pretrained)

    def weights_file(self) -> str | None:
        return str(weights_path(self.model, self.pretrained))

    def pretrained_encoder(self) -> TorchvisionEncoder:
        encoder = TorchvisionEncoder(self.model)
        encoder.load_state_dict(pretrained_state(self.model, self.pretrained), strict=True)
        return encoder

    @property
    def feature_dim(self) -> int:
        return _feature_dim(self.model)

    def preprocess(self, examples: Any) -> torch.Tensor:
        return imagenet_preprocess(examples, self.cfg.image_size)


@lru_cache(maxsize=8)
def _feature_dim(model: str) -> int:
    return TorchvisionEncoder(model).feature_dim
