"""Task-vector arithmetic shared by every merge rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]


def task_vector(finetuned: StateDict, base: StateDict, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``tau = theta_finetuned - theta_base`` over ``keys`` (the fine-tuned tensors)."""
    return {k: finetuned[k].detach() - base[k].detach() for k in keys}


def check_compatible(base: StateDict, vectors: Sequence[StateDict]) -> None:
    """Raise ``ValueError`` naming the tensor if the task vectors do not fit the base or each other."""
    if not vectors:
        raise ValueError("no task vectors to merge")
    keys = set(vectors[0])
    for i, vec in enumerate(vectors):
        if set(vec) != keys:
            diff = sorted(set(vec) ^ keys)[:5]
            raise ValueError(f"task vector {i} has different tensors than task vector 0 (e.g. {diff})")
        for k, v in vec.items():
            if k not in base:
                raise ValueError(f"task vector {i}: tensor {k!r} does not exist in the base model")
            if v.shape != base[k].shape:
                raise ValueError(f"task vector {i}: tensor {k!r} has shape {tuple(v.shape)}, "
                                 f"base has {tuple(base[k].shape)}")
            if not v.is_floating_point():
                raise ValueError(f"task vector {i}: tensor {k!r} is {v.dtype}; task vectors must be floating point")


def add_scaled(base: StateDict, delta: StateDict, scale: float) -> dict[str, torch.Tensor]:
    """``theta = theta_base + scale * delta``; tensors without a delta are copied from the base."""
    out = {k: v.clone() for k, v in base.items()}
    for k, d in delta.items():
        out[k] = base[k] + scale * d.to(base[k].dtype)
    return out
