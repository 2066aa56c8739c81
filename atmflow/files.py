"""Atomic file writes: a file is written under a temporary name in its folder, flushed to disk
(``fsync``), renamed over the target, and the folder is synced, so a reader (or a resumed run) never
sees a half-written file, and after a crash or power loss the name points at the old or the new
content, never at a truncated one (POSIX ``rename`` is atomic within a file system; the folder's
``fsync`` makes the rename itself durable)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; folders that cannot be opened (some platforms) are skipped."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    """Sync the written temporary file, rename it to ``path`` and sync the folder."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save ``tensors`` as safetensors at ``path``."""
    tmp = _temporary(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
