"""Atomic writes (issue 16): the new content is synced to disk before the rename, the folder after it, and
no temporary file is left, even when the write fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from atmflow import files


def test_atomic_write_syncs_the_file_then_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        synced.append("rename")
        replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", spy_fsync)
    monkeypatch.setattr(files.os, "replace", spy_replace)
    target = tmp_path / "results.json"
    target.write_text("old")
    files.atomic_write_text(target, '{"final": {}}')
    assert target.read_text() == '{"final": {}}'
    assert len(synced) == 3 and synced[0].endswith(".tmp") and synced[1] == "rename" and synced[2] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "w.safetensors"
    files.atomic_save_tensors({"a": torch.ones(2)}, target)
    before = target.read_bytes()

    def broken(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_save_tensors({"a": torch.zeros(2)}, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
