"""Task-vector arithmetic shared by every merge rule.

Rules compute in ``compute_dtype`` (float32 for half-precision models, float64 stays float64) and the
merged tensor is rounded once, to the base tensor's dtype, when the update is added to the base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]


def task_vector(finetuned: StateDict, base: StateDict, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``tau = theta_finetuned - theta_base`` over ``keys`` (the fine-tuned tensors)."""
    return {k: finetuned[k].detach() - base[k].detach() for k in keys}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a rule computes in for tensors stored as ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def check_keys(base: StateDict, vectors: Sequence[StateDict]) -> None:
    """Raise ``ValueError`` naming the tensor if the task vectors' names do not fit the base or each other."""
    if not vectors:
        raise ValueError("no task vectors to merge")
    keys = set(vectors[0])
    for i, vec in enumerate(vectors):
        if set(vec) != keys:
            diff = sorted(set(vec) ^ keys)[:5]
            raise ValueError(f"task vector {i} has different tensors than task vector 0 (e.g. {diff})")
        missing = sorted(k for k in vec if k not in base)
        if missing:
            raise ValueError(f"task vector {i}: tensor {missing[0]!r} does not exist in the base model")


def check_tensor(what: str, name: str, tensor: torch.Tensor, base: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``what`` (e.g. ``"task vector 2"``) and the tensor if it cannot be merged."""
    if tensor.shape != base.shape:
        raise ValueError(f"{what}: tensor {name!r} has shape {tuple(tensor.shape)}, base has {tuple(base.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{what}: tensor {name!r} is {tensor.dtype}; task vectors must be floating point")
    if not base.is_floating_point():
        raise ValueError(f"base: tensor {name!r} is {base.dtype}; only floating-point tensors can be merged")


def add_update(base: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``theta = theta_base + update``, computed in ``compute_dtype`` and stored in the base's dtype."""
    dtype = compute_dtype(base.dtype)
    return (base.detach().to(dtype) + update.to(dtype)).to(base.dtype)


def add_scaled(base: StateDict, delta: StateDict, scale: float) -> dict[str, torch.Tensor]:
    """``theta = theta_base + scale * delta``; tensors without a delta are copied from the base."""
    out = {k: v.clone() for k, v in base.items()}
    for k, d in delta.items():
        out[k] = add_update(base[k], scale * d.to(compute_dtype(d.dtype)))
    return out
