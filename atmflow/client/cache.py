"""An optional on-disk cache of a client's fine-tuning results (``cache-dir``).

Fine-tuning is deterministic given the base weights, the instructions, the task and the client's
data / head settings, so a result computed once can be reused: one-shot methods that merge the
same fine-tuned task vectors differently (TA, TIES, DARE, ...) then fine-tune only once.
The key is a SHA-256 over all of these; a changed base or setting is a different entry. What does
not change the fine-tuning (whether to also test the fine-tuned model, whether to also estimate
TATR's gradients) is not part of the key: an entry is completed when such extras are asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from atmflow.config import RunConfig
from atmflow.files import atomic_save_tensors, atomic_write_text
from atmflow.protocol import TrainInstructions


def cache_key(base: dict[str, torch.Tensor], instructions: TrainInstructions, task: str, cfg: RunConfig) -> str:
    digest = hashlib.sha256()
    for name in sorted(base):
        digest.update(name.encode())
        digest.update(base[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = cfg.client_settings()
    if cfg.finetune != "talos":  # it does not change a full fine-tuning, whose entries keep their earlier keys
        del settings["talos-calibration"]
    fields = {**dataclasses.asdict(instructions), "evaluate_finetuned": None, "tatr_exemplars": None}
    digest.update(json.dumps({"task": task, "instructions": fields, "settings": settings},
                             sort_keys=True).encode())
    return digest.hexdigest()[:32]


def load(folder: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """``(task vector, metrics)`` of a cached fine-tuning, or None."""
    entry = Path(folder) / key
    if not (entry / "metrics.json").is_file():
        return None
    return load_file(str(entry / "tau.safetensors")), json.loads((entry / "metrics.json").read_text())


def store(folder: str, key: str, tau: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
    """Write an entry atomically (a half-written entry is never read: metrics.json is renamed last)."""
    entry = Path(folder) / key
    entry.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(tau, entry / "tau.safetensors")
    atomic_write_text(entry / "metrics.json", json.dumps(metrics))


def load_grads(folder: str, key: str, exemplars: int) -> dict[str, torch.Tensor] | None:
    """TATR's gradient estimate over ``exemplars`` examples at the entry's base weights, or None."""
    path = Path(folder) / key / f"grads-{exemplars}.safetensors"
    return load_file(str(path)) if path.is_file() else None


def store_grads(folder: str, key: str, exemplars: int, grads: dict[str, torch.Tensor]) -> None:
    entry = Path(folder) / key
    entry.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(grads, entry / f"grads-{exemplars}.safetensors")
