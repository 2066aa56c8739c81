"""Tiny own-task data for tests: image folders of random 8 x 8 PNGs, and task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def image_folder(root: Path, classes: dict[str, int], test: int) -> Path:
    """``root/train/<class>/*.png`` (``classes[c]`` images each) and ``test`` images per class under ``test``."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", classes), ("test", {c: test for c in classes})):
        for c, n in counts.items():
            if n == 0:
                continue
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_task_file(path: Path, tasks: dict[str, dict[str, Any]]) -> Path:
    """A task file with one ``[tasks.<name>]`` table per entry."""
    lines = []
    for name, table in tasks.items():
        lines.append(f"[tasks.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path
