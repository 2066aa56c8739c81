"""The model-family interface: everything model-specific that clients and the server need.

Clients and the server never name a model class; they ask the run's family (:func:`get_family`):

* :meth:`ModelFamily.check_available` - fail before any work when the weights are missing;
* :meth:`ModelFamily.pretrained_encoder` - a fresh encoder holding the pretrained weights
  (an ``nn.Module`` mapping an input batch to features ``[N, feature_dim]``); the server's theta_0,
  and on clients the module that a received state dict is loaded into (strict);
* :meth:`ModelFamily.trainable_keys` - the tensors that are fine-tuned, sent and merged;
* :meth:`ModelFamily.preprocess` - a batch of raw examples of the family's modality (images, or
  texts) -> the input tensor (see :mod:`atmflow.data.examples`); :meth:`ModelFamily.train_preprocess`
  the same through the family's random training transform, for families that have one (open_clip);
* :meth:`ModelFamily.build_head` - the task's frozen head (``FrozenHead``): the generic ``probe`` and
  ``random`` heads are built here from the pretrained features; families add their own kinds
  (open_clip: ``zeroshot``) by overriding :meth:`ModelFamily.special_head`.
"""

from __future__ import annotations

import json
import zlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from atmflow.data.examples import batch_to
from atmflow.models.heads import FrozenHead, few_shot_indices, probe_head, random_head
from atmflow.models.registry import family_entry

if TYPE_CHECKING:
    from atmflow.config import RunConfig
    from atmflow.data.splits import TaskData


def task_seed(seed: int, task: str) -> int:
    """A per-task seed derived from the run seed (stable across processes and machines)."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % 2**31


@torch.no_grad()
def encode(encoder: nn.Module, x: Any, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Features of ``x`` (a tensor or a lazy view) in eval mode, on the CPU."""
    encoder.eval().to(device)
    dtype = next(encoder.parameters()).dtype
    chunks = [encoder(batch_to(x[i : i + batch_size], device, dtype)).float().cpu()
              for i in range(0, len(x), batch_size)]
    return torch.cat(chunks)


class ModelFamily(ABC):
    """A pretrained model family (see module docstring). One instance per run config and process."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.model = cfg.model_name
        self.pretrained = cfg.pretrained_source

    @abstractmethod
    def check_available(self) -> None:
        """Raise :class:`~atmflow.models.registry.WeightsUnavailableError` naming the missing weights,
        where they were looked for and the command that fetches them."""

    def weights_file(self) -> str | None:
        """The local file the pretrained weights are read from, for the run's provenance (its sha256);
        None when there is no single file (random weights, a folder)."""
        from pathlib import Path

        return self.pretrained if Path(self.pretrained).expanduser().is_file() else None

    @abstractmethod
    def pretrained_encoder(self) -> nn.Module:
        """A fresh encoder (float32) holding the pretrained weights; callers may modify it."""

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Size of the features the encoder returns."""

    @abstractmethod
    def preprocess(self, examples: Any) -> torch.Tensor:
        """A batch of raw examples -> the encoder's input tensor (float images or int token ids)."""

    def train_preprocess(self, examples: Any) -> torch.Tensor:
        """Like :meth:`preprocess`, through the family's random training transform (draws from torch's
        global generator: callers seed it, see :class:`atmflow.data.examples.AugmentedInputs`)."""
        raise ValueError(f"model-family {self.cfg.model_family!r} has no training transform; "
                         "use train-transform = 'auto' or 'eval'")

    def trainable_keys(self, encoder: nn.Module) -> list[str]:
        """Names of the tensors that are fine-tuned and merged (parameters; buffers stay frozen)."""
        return [name for name, p in encoder.named_parameters() if p.requires_grad]

    def build_head(self, data: TaskData, device: torch.device) -> FrozenHead:
        """The task's frozen head, built once from the pretrained encoder (``cfg.head_kind``).

        ``probe``: logistic regression on the pretrained features of ``probe-shots`` training
        examples per class; ``random``: seeded random unit rows times ``head-temperature``.
        """
        kind, seed = self.cfg.head_kind, task_seed(self.cfg.seed, data.name)
        if kind == "random":
            return random_head(data.num_classes, self.feature_dim, seed=seed, temperature=self.cfg.head_temperature)
        if kind == "probe":
            idx = few_shot_indices(data.train.y.numpy(), self.cfg.probe_shots, np.random.default_rng(seed))
            features = encode(self.pretrained_encoder(), data.train.x[idx], device)
            return probe_head(features, data.train.y[idx], data.num_classes)
        return self.special_head(kind, data, device)

    def special_head(self, kind: str, data: TaskData, device: torch.device) -> FrozenHead:
        """Heads specific to the family (e.g. open_clip's zero-shot head)."""
        raise ValueError(f"head={kind!r} is not available for model-family {self.cfg.model_family!r}; "
                         f"allowed: {', '.join(family_entry(self.cfg.model_family).heads)}")


_FAMILIES: dict[str, ModelFamily] = {}


def get_family(cfg: RunConfig) -> ModelFamily:
    """The run's model family (one instance per process and client settings)."""
    key = json.dumps(cfg.client_settings(), sort_keys=True)
    if key not in _FAMILIES:
        module, _, name = family_entry(cfg.model_family).target.partition(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        if len(_FAMILIES) >= 8:
            _FAMILIES.pop(next(iter(_FAMILIES)))
        _FAMILIES[key] = cls(cfg)
    return _FAMILIES[key]
