"""Checkpoints as read-only tensor mappings: lazy for safetensors, in memory for PyTorch files.

``SafetensorsFile`` loads one tensor per access, opening the file each time: the tensor is a view
of the mapped file, and a handle kept open would keep every page read mapped, and counted in the
process's memory, until it is closed. A base file keeps its last tensor (``keep_last``), which every
task vector asks for in turn.
PyTorch state-dict files (``torch.load(..., weights_only=True)``; a dict of tensors, optionally
under ``"state_dict"``) cannot be read partially and are held in memory: prefer safetensors for
large models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from atmflow.merging.task_vectors import StateDict, compute_dtype

# dtype names of the safetensors format (https://github.com/huggingface/safetensors)
_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64, "F16": torch.float16,
    "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class SafetensorsFile(Mapping[str, torch.Tensor]):
    """A safetensors file as a mapping that reads a tensor when it is asked for."""

    def __init__(self, path: str | Path, keep_last: bool = False) -> None:
        self.path = Path(path)
        self.keep_last = keep_last
        try:
            with safe_open(self.path, framework="pt") as f:
                slices = {k: f.get_slice(k) for k in f.keys()}
                self.info = {k: TensorInfo(tuple(s.get_shape()), self._dtype(k, s.get_dtype()))
                             for k, s in slices.items()}
        except SafetensorError as err:
            raise ValueError(f"{self.path}: not a readable safetensors file ({err})") from None
        self._last: tuple[str, torch.Tensor] | None = None

    def _dtype(self, name: str, dtype: str) -> torch.dtype:
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has dtype {dtype}, which atmflow does not read")
        return _SAFETENSORS_DTYPES[dtype]

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        if name not in self.info:
            raise KeyError(name)
        with safe_open(self.path, framework="pt") as f:
            tensor = f.get_tensor(name)
        if self.keep_last:
            self._last = (name, tensor)
        return tensor

    def __contains__(self, name: object) -> bool:
        return name in self.info

    def __iter__(self) -> Iterator[str]:
        return iter(self.info)

    def __len__(self) -> int:
        return len(self.info)


def load_checkpoint(path: str | Path, keep_last: bool = False) -> StateDict:
    """A ``.safetensors`` file (lazy; see ``SafetensorsFile`` for ``keep_last``) or a PyTorch state-dict
    file (loaded) as a tensor mapping."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return SafetensorsFile(path, keep_last)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors alike
        raise ValueError(f"{path}: not a PyTorch state-dict file ({err})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return obj


def tensor_info(source: StateDict) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes, without loading tensors from files."""
    if isinstance(source, SafetensorsFile):
        return source.info
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in source.items()}


class LazyTaskVector(Mapping[str, torch.Tensor]):
    """``tau = theta_finetuned - theta_base`` over ``names``, computed (in ``compute_dtype``) when asked for."""

    def __init__(self, finetuned: StateDict, base: StateDict, names: Sequence[str]) -> None:
        self.finetuned, self.base, self.names = finetuned, base, dict.fromkeys(names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        base = self.base[name]
        dtype = compute_dtype(base.dtype)
        return self.finetuned[name].to(dtype) - base.to(dtype)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
