"""One client's task: its data splits, its frozen head, and the device it computes on."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from atmflow.config import RunConfig
from atmflow.data.splits import TaskData, load_task
from atmflow.models.encoder import FEATURE_DIM, pretrained_encoder
from atmflow.models.heads import FrozenHead, few_shot_indices, probe_head, random_head


@dataclass(frozen=True)
class LocalTask:
    data: TaskData
    head: FrozenHead
    device: torch.device


def task_seed(seed: int, task: str) -> int:
    """A per-task seed derived from the run seed (stable across processes and machines)."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % 2**31


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is visible to this client")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@torch.no_grad()
def encode(encoder: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    encoder.eval().to(device)
    return torch.cat([encoder(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def build_head(cfg: RunConfig, data: TaskData, device: torch.device) -> FrozenHead:
    """The task's frozen head, fitted once on the pretrained encoder (see ``atmflow.models.heads``)."""
    seed = task_seed(cfg.seed, data.name)
    if cfg.head == "random":
        return random_head(data.num_classes, FEATURE_DIM, seed=seed, temperature=cfg.head_temperature)
    idx = few_shot_indices(data.train.y.numpy(), cfg.probe_shots, np.random.default_rng(seed))
    features = encode(pretrained_encoder(), data.train.x[idx], device)
    return probe_head(features, data.train.y[idx], data.num_classes)


_LOADED: dict[str, LocalTask] = {}
_MAX_LOADED = 8


def local_task(task: str, cfg: RunConfig) -> LocalTask:
    """Load the data and fit the head once per process and client settings (a client answers many
    messages; runs that differ only in server-side settings share them)."""
    key = json.dumps([task, cfg.client_settings()], sort_keys=True)
    if key not in _LOADED:
        if len(_LOADED) >= _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = _load_local_task(task, cfg)
    return _LOADED[key]


def _load_local_task(task: str, cfg: RunConfig) -> LocalTask:
    device = resolve_device(cfg.device)
    data = load_task(task, train_size=cfg.train_size, test_size=cfg.test_size, val_fraction=cfg.val_fraction,
                     image_size=cfg.image_size, seed=cfg.data_seed, data_dir=cfg.fashion_mnist_dir)
    return LocalTask(data, build_head(cfg, data, device).to(device, cfg.dtype), device)
