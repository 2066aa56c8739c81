"""The model families atmflow can fine-tune and merge, by name (light: no torch import).

A family (``model-family`` in the run config) is a kind of pretrained model plus everything that
depends on it: the encoder that is fine-tuned and merged, its trainable tensors, its input
preprocessing and the frozen per-task heads (see :class:`atmflow.models.family.ModelFamily`).
Each entry names the class that implements it (imported on first use, so that validating a
config stays fast) and the defaults that ``model = ""``, ``pretrained = ""`` and ``head = "auto"``
stand for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "text"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not where they were looked for; the message says how to get them."""


@dataclass(frozen=True)
class FamilyEntry:
    target: str  # "module:Class" of the ModelFamily subclass
    modality: Modality  # the kind of task inputs it takes (task registry: atmflow.data.tasks)
    default_model: str  # what model = "" means
    default_pretrained: str  # what pretrained = "" means
    heads: tuple[str, ...]  # allowed head kinds; the first is what head = "auto" means
    about: str = ""


FAMILIES: dict[str, FamilyEntry] = {
    "mobilenet-v2": FamilyEntry(
        "atmflow.models.mobilenet:MobileNetV2Family", "image", "mobilenet-v2", "imagenet", ("probe", "random"),
        "ImageNet MobileNetV2 (installed from PyPI), the embedded benchmark"),
    "open_clip": FamilyEntry(
        "atmflow.models.clip:OpenCLIPFamily", "image", "ViT-B-16", "openai", ("zeroshot", "probe", "random"),
        "CLIP image encoders (open_clip) with frozen zero-shot heads, the papers' vision setting"),
    "torchvision": FamilyEntry(
        "atmflow.models.torchvision_family:TorchvisionFamily", "image", "resnet18", "DEFAULT", ("probe", "random"),
        "any torchvision classification model, weights from a local file or the local torch cache"),
    "hf-vision": FamilyEntry(
        "atmflow.models.hf_image:HFVisionFamily", "image", "facebook/dinov2-small", "default", ("probe", "random"),
        "transformers image encoders (ViT, DINOv2, CLIP / SigLIP vision towers) from a local folder or the HF cache"),
    "hf-text": FamilyEntry(
        "atmflow.models.text:HFTextFamily", "text", "minilm-l6", "default", ("probe", "random"),
        "transformers text encoders (MiniLM-L6, BERT-base, RoBERTa-base) with frozen heads, text tasks and GLUE"),
}


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelt ``name``, else ""."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def family_entry(name: str) -> FamilyEntry:
    if name not in FAMILIES:
        raise ValueError(f"unknown model-family {name!r}{closest(name, FAMILIES)}; "
                         f"allowed: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
