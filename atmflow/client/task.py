"""One client's task: its data splits, its frozen head, the device it computes on and its precision."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch

from atmflow.config import RunConfig
from atmflow.data.splits import TaskData, make_splits
from atmflow.data.tasks import load_raw_task
from atmflow.models.family import encode, get_family, task_seed
from atmflow.models.heads import FrozenHead

__all__ = ["LocalTask", "encode", "load_task", "local_task", "resolve_device", "task_seed", "use_amp"]


@dataclass(frozen=True)
class LocalTask:
    data: TaskData
    head: FrozenHead
    device: torch.device
    amp: bool = False  # bf16 autocast of forward passes (CUDA only)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Mixed precision for fine-tuning and evaluation: bf16 autocast when ``amp``, else nothing."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is visible to this client")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def use_amp(cfg: RunConfig, device: torch.device) -> bool:
    """``amp = "auto"``: bf16 autocast on CUDA with float32 weights; ``"bf16"`` requires CUDA."""
    if cfg.amp == "bf16" and device.type != "cuda":
        raise RuntimeError(f"amp='bf16' needs a CUDA device; this client computes on {device} "
                           "(use amp='auto' to autocast only on CUDA)")
    return cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda" and cfg.precision == "float32")


_DATA: dict[str, TaskData] = {}


def load_task(task: str, cfg: RunConfig) -> TaskData:
    """The task's splits, preprocessed by the run's model family (cached per process and settings)."""
    key = json.dumps([task, cfg.client_settings()], sort_keys=True)
    if key not in _DATA:
        if len(_DATA) >= 16:
            _DATA.pop(next(iter(_DATA)))
        family = get_family(cfg)
        _DATA[key] = make_splits(task, load_raw_task(task, cfg), train_size=cfg.train_size, test_size=cfg.test_size,
                                 val_fraction=cfg.val_fraction, val_max=cfg.val_max, seed=cfg.data_seed,
                                 preprocess=family.preprocess, workers=cfg.num_workers,
                                 train_preprocess=family.train_preprocess if cfg.augment else None)
    return _DATA[key]


_LOADED: dict[str, LocalTask] = {}
_MAX_LOADED = 8


def local_task(task: str, cfg: RunConfig) -> LocalTask:
    """Load the data and build the head once per process and client settings (a client answers many
    messages; runs that differ only in server-side settings share them)."""
    key = json.dumps([task, cfg.client_settings()], sort_keys=True)
    if key not in _LOADED:
        if len(_LOADED) >= _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = _load_local_task(task, cfg)
    return _LOADED[key]


def _load_local_task(task: str, cfg: RunConfig) -> LocalTask:
    device = resolve_device(cfg.device)
    family = get_family(cfg)
    family.check_available()
    data = load_task(task, cfg)
    return LocalTask(data, family.build_head(data, device).to(device, cfg.dtype), device, use_amp(cfg, device))
