"""Where a run's numbers came from: package versions, code version, machine, model and weights, head.

Recorded in ``results.json`` (``provenance``) and shown in the header of ``report.md``, so that two runs
that disagree can be told apart (README, "Reproducibility"). Nothing here may fail a run: a missing
package, a folder that is not a git checkout or a machine without git give ``None`` entries.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = {"torch": "torch", "flwr": "flwr", "open_clip": "open_clip_torch", "transformers": "transformers",
            "atmflow": "atmflow"}
CHECKOUT = Path(__file__).resolve().parents[2]  # the app folder: a git checkout in development


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers (None: not installed)."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(dist) for name, dist in PACKAGES.items()}


def git_state(folder: Path = CHECKOUT) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout at ``folder``; None values when it is not one
    (an installed FAB, a wheel) or git is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def device_name(choice: str) -> str:
    """What ``device`` means on this machine (the server's view; each client resolves its own)."""
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu" if choice == "auto" else choice


def provenance(cfg: Any, weights_file: str | None) -> dict[str, Any]:
    """The run's provenance record (see module docstring). ``weights_file``: the local file the pretrained
    weights were read from (hashed), or None (random weights, a folder of several files)."""
    weights: dict[str, Any] = {"source": cfg.pretrained_source, "file": weights_file, "sha256": None}
    if weights_file and Path(weights_file).is_file():
        weights["sha256"] = sha256_file(weights_file)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_state(),
        "cores": os.cpu_count(),
        "num_threads": cfg.num_threads,
        "device": device_name(cfg.device),
        "model_family": cfg.model_family,
        "model": cfg.model_name,
        "pretrained": weights,
        "head": cfg.head_kind,
    }


def header_lines(prov: dict[str, Any]) -> list[str]:
    """The report's provenance header, one fact per line (Markdown)."""
    if not prov:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items() if v)
    git = prov.get("git") or {}
    code = (f"git {git['commit'][:12]}" + (" (uncommitted changes)" if git.get("dirty") else "")
            if git.get("commit") else "not a git checkout")
    weights = prov.get("pretrained") or {}
    sha = f", sha256 {weights['sha256'][:16]}..." if weights.get("sha256") else ""
    return [
        f"- Model: `{prov.get('model')}` (family `{prov.get('model_family')}`), pretrained weights "
        f"`{weights.get('source')}`" + (f" from `{weights['file']}`" if weights.get("file") else "") + sha,
        f"- Head: `{prov.get('head')}`",
        f"- Date (UTC): {prov.get('date')}; machine: {prov.get('cores')} cores, {prov.get('num_threads')} "
        f"thread(s) per process, device {prov.get('device')}",
        f"- Code: {code}; {versions}",
    ]
