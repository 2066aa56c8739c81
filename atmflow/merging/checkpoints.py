"""Merging checkpoint files (what ``atmflow merge`` runs): validate, merge tensor by tensor, write atomically.

Which tensors are merged: the floating-point tensors of the base, except those whose name matches an
``exclude`` regular expression (``re.search``). The others are copied from the base unchanged and
listed in the report: non-floating-point tensors (integer buffers such as BatchNorm's
``num_batches_tracked``, which a fine-tuning run changes but which mean nothing averaged) and the
excluded ones (frozen parameters such as per-task classification heads).

Every fine-tuned file must hold exactly the base's tensors, with the same shapes and dtypes; each
gradient file (TATR) must hold every merged tensor with its shape, in floating point. Every merged
tensor of every input and the merged model must be finite (NaN or inf anywhere would spread through
every sum; ``allow_non_finite`` lifts this), and ``out`` must not be one of the inputs (compared
after resolving links and relative paths). Errors name the file and the tensor and come before any
computation (the merged model's check before anything is written). The merged model is written to a temporary file
in the output's folder, then renamed: a failed merge leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from atmflow.merging.checkpoint_files import LazyTaskVector, TensorInfo, load_checkpoint, tensor_info
from atmflow.merging.driver import merge
from atmflow.merging.registry import make_rule


@dataclass(frozen=True)
class MergeReport:
    method: str
    params: dict[str, float]  # every parameter of the method, defaults filled in
    merged: list[str]
    parameters: int  # entries of the merged tensors
    not_float: list[str]  # copied from the base
    excluded: list[str]  # copied from the base


def merge_checkpoints(method: str, base: str | Path, finetuned: Sequence[str | Path], out: str | Path, *,
                      grads: Sequence[str | Path] | None = None, exclude: Sequence[str] = (),
                      allow_non_finite: bool = False, **params: float) -> MergeReport:
    """Merge the fine-tuned checkpoints ``finetuned`` of ``base`` with ``method`` into the file ``out``.

    Files are ``.safetensors`` (read one tensor at a time) or PyTorch state dicts; ``out`` is written
    as safetensors if its name ends in ``.safetensors``, else with ``torch.save``. ``grads[t]`` is the
    gradient estimate of the task of ``finetuned[t]`` (gradient TATR). ``ValueError`` on any mismatch.
    """
    rule = make_rule(method, params, grads=grads is not None)
    patterns = _compile(exclude)
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"{out}: the folder {out.parent} does not exist")
    _check_out_is_no_input(out, [base, *finetuned, *(grads or [])])
    if grads is not None and len(grads) != len(finetuned):
        raise ValueError(f"{len(grads)} gradient files for {len(finetuned)} fine-tuned checkpoints; "
                         "one per task needed")
    base_sd = load_checkpoint(base, keep_last=True)
    info = tensor_info(base_sd)
    checkpoints = [load_checkpoint(path) for path in finetuned]
    for path, sd in zip(finetuned, checkpoints, strict=True):
        _check_same_tensors(tensor_info(sd), info, path, base)
    not_float = [k for k, i in info.items() if not i.dtype.is_floating_point]
    excluded = [k for k, i in info.items() if i.dtype.is_floating_point and any(p.search(k) for p in patterns)]
    passed_through = set(not_float) | set(excluded)
    names = [k for k in info if k not in passed_through]
    if not names:
        raise ValueError(f"{base}: no floating-point tensor is left to merge (excluded: {len(excluded)})")
    grad_sds = None
    if grads is not None:
        grad_sds = [load_checkpoint(path) for path in grads]
        for path, sd in zip(grads, grad_sds, strict=True):
            _check_gradients(tensor_info(sd), info, names, path)
    if not allow_non_finite:
        for path, sd in [(base, base_sd), *zip(finetuned, checkpoints, strict=True),
                         *zip(grads or [], grad_sds or [], strict=True)]:
            _check_finite(sd, names, path)
    state = merge(method, base_sd, [LazyTaskVector(sd, base_sd, names) for sd in checkpoints], grads=grad_sds,
                  **params)
    if not allow_non_finite:
        _check_finite(state, names, f"{out} (the merged model, not written)")
    _write_atomically(state, out, {"atmflow.method": method, "atmflow.params": json.dumps(rule.values())})
    return MergeReport(method, rule.values(), names, sum(math.prod(info[k].shape) for k in names), not_float, excluded)


def _check_out_is_no_input(out: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output path that is one of the inputs (it would be overwritten while it is read)."""
    target = out.resolve()
    same = [str(p) for p in inputs if Path(p).resolve() == target]
    if same:
        raise ValueError(f"--out {out} is also an input ({same[0]}); write the merged model to a new file")


def _check_finite(sd: Mapping[str, torch.Tensor], names: Sequence[str], path: str | Path) -> None:
    """Every tensor of ``names`` in ``sd`` is finite; else a ValueError naming the file and the tensor."""
    for name in names:
        if name in sd and not bool(torch.isfinite(sd[name]).all()):
            raise ValueError(f"{path}: tensor {name!r} has non-finite values (NaN or inf); fix the file, or pass "
                             "--allow-non-finite to merge it anyway")


def _compile(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"exclude pattern {pattern!r} is not a regular expression: {err}") from None
    return compiled


def _check_same_tensors(info: Mapping[str, TensorInfo], base: Mapping[str, TensorInfo], path: str | Path,
                        base_path: str | Path) -> None:
    for name in base:
        if name not in info:
            raise ValueError(f"{path}: has no tensor {name!r} (the base {base_path} has)")
    for name, i in info.items():
        if name not in base:
            raise ValueError(f"{path}: tensor {name!r} is not in the base {base_path}")
        if i.shape != base[name].shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {i.shape}, the base {base_path} has "
                             f"{base[name].shape}")
        if i.dtype != base[name].dtype:
            raise ValueError(f"{path}: tensor {name!r} is {i.dtype}, the base {base_path} has {base[name].dtype}")


def _check_gradients(info: Mapping[str, TensorInfo], base: Mapping[str, TensorInfo], names: Sequence[str],
                     path: str | Path) -> None:
    for name in info:
        if name not in base:
            raise ValueError(f"{path}: gradient tensor {name!r} is not in the base model")
    for name in names:
        if name not in info:
            raise ValueError(f"{path}: has no gradient for the merged tensor {name!r}")
        if info[name].shape != base[name].shape:
            raise ValueError(f"{path}: gradient {name!r} has shape {info[name].shape}, the tensor has "
                             f"{base[name].shape}")
        if not info[name].dtype.is_floating_point:
            raise ValueError(f"{path}: gradient {name!r} is {info[name].dtype}, not floating point")


def _write_atomically(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if out.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt", **metadata})
        else:
            torch.save(state, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
