"""The model families atmflow can fine-tune and merge, by name (light: no torch import).

A family (``model-family`` in the run config) is a kind of pretrained model plus everything that
depends on it: the encoder that is fine-tuned and merged, its trainable tensors, its input
preprocessing and the frozen per-task heads (see :class:`atmflow.models.family.ModelFamily`).
Each entry names the class that implements it (imported on first use, so that validating a
config stays fast) and the defaults that ``model = ""``, ``pretrained = ""``, ``head = "auto"`` and
the fine-tuning recipe's ``"auto"`` keys (``lr-schedule``, ``warmup-steps``, ``grad-clip``,
``train-transform``) stand for.

Recipes. ``open_clip`` follows the literature: a task's fine-tuning from the pretrained model (one-shot
methods, the individual models, PH-ATM's TA start) as the task_vectors code (Ilharco et al. 2023, which
paper 004 follows): AdamW with a cosine schedule after 500 linear warm-up steps, gradient norm clipped
at 1.0, open_clip's training transform; each ATM round as the ATM authors' code (reference notes:
LuckerZOfficiaL/My-Task-Vector-Playground): no schedule, clipping at 10. ``mobilenet-v2`` (the embedded
benchmark, whose numbers the README reports) and ``hf-text`` keep a constant learning rate, no
clipping and their evaluation preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "text"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not where they were looked for; the message says how to get them."""


@dataclass(frozen=True)
class Recipe:
    """How a client fine-tunes besides optimizer, lr, weight decay and batch size: the learning-rate
    schedule (``constant`` or ``cosine``: linear warm-up over ``warmup_steps``, then cosine decay to 0),
    and the gradient-norm clipping threshold (0 = none)."""

    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0


PLAIN = Recipe()
TASK_VECTORS = Recipe("cosine", 500, 1.0)  # mlfoundations/task_vectors src/finetune.py (cosine_lr, clip 1.0)
ATM_ROUNDS = Recipe("constant", 0, 10.0)  # the ATM authors' code: no schedule in ATM iterations, clip 10


@dataclass(frozen=True)
class FamilyEntry:
    target: str  # "module:Class" of the ModelFamily subclass
    modality: Modality  # the kind of task inputs it takes (task registry: atmflow.data.tasks)
    default_model: str  # what model = "" means
    default_pretrained: str  # what pretrained = "" means
    heads: tuple[str, ...]  # allowed head kinds; the first is what head = "auto" means
    about: str = ""
    finetune_recipe: Recipe = PLAIN  # "auto" for a fine-tuning from the pretrained model (whole budget)
    atm_recipe: Recipe = PLAIN  # "auto" for each ATM round
    train_transform: bool = False  # has a training transform (augmentation); train-transform "auto" uses it


FAMILIES: dict[str, FamilyEntry] = {
    "mobilenet-v2": FamilyEntry(
        "atmflow.models.mobilenet:MobileNetV2Family", "image", "mobilenet-v2", "imagenet", ("probe", "random"),
        "ImageNet MobileNetV2 (installed from PyPI), the embedded benchmark"),
    "open_clip": FamilyEntry(
        "atmflow.models.clip:OpenCLIPFamily", "image", "ViT-B-16", "openai", ("zeroshot", "probe", "random"),
        "CLIP image encoders (open_clip) with frozen zero-shot heads, the papers' vision setting",
        finetune_recipe=TASK_VECTORS, atm_recipe=ATM_ROUNDS, train_transform=True),
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
