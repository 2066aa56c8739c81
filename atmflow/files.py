"""Atomic file writes: a file is written under a temporary name in its folder, then renamed, so a
reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save ``tensors`` as safetensors at ``path``."""
    tmp = _temporary(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
