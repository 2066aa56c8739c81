"""Merge rules as pure functions over state dicts (``Mapping[str, torch.Tensor]``); no Flower here.

A *task vector* (Ilharco et al., 2023) is ``tau_t = theta_t - theta_base``: the fine-tuned weights
minus the weights the fine-tuning started from. It covers only the tensors that are fine-tuned;
every other tensor of the base (e.g. frozen BatchNorm statistics) passes through a merge unchanged.

``merge(method, base, vectors, grads=None, **params)`` runs any rule of ``METHODS`` (ta, mean, ties,
breadcrumbs, dare, tatr, ties+tatr) tensor by tensor; ``merge_checkpoints`` does the same on files
(the ``atmflow merge`` command). Names are imported on first use, so that building the CLI (e.g.
``atmflow validate``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "registry",
    "Rule": "rule",
    "SafetensorsFile": "checkpoint_files",
    "add_scaled": "task_vectors",
    "load_checkpoint": "checkpoint_files",
    "mean_merge": "driver",
    "merge": "driver",
    "merge_checkpoints": "checkpoints",
    "task_arithmetic": "driver",
    "task_vector": "task_vectors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
