"""Checkpoints after every round, and resuming from the last completed one.

A checkpoint is two files in the run folder: ``checkpoint-round<K>.safetensors`` (the base model
after round K) and ``checkpoint.json`` (the round, the resolved config and the results so far),
the JSON written last and atomically, so a run killed mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from atmflow.config import keys_with_role
from atmflow.files import atomic_save_tensors, atomic_write_text

STATE_FILE = "checkpoint.json"


@contextmanager
def writing(folder: Path, what: str) -> Iterator[None]:
    """A failed write in the run folder (made read-only, full disk) becomes one message naming the folder,
    what was being written and what to do, instead of a file system or safetensors traceback."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        raise RuntimeError(f"cannot write {what} to {folder} ({err}); the run folder must stay writable while the "
                           "run goes on: fix its permissions or free disk space, then submit the same run with "
                           "resume=true (it continues after the last checkpoint in that folder)") from None


def save_checkpoint(folder: Path, round_: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    with writing(folder, f"the checkpoint of round {round_}"):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-round{round_}.safetensors"
        atomic_save_tensors(weights, folder / name)
        previous = load_state(folder)
        atomic_write_text(folder / STATE_FILE, json.dumps({**state, "round": round_, "weights": name}, indent=2))
        if previous and previous["weights"] != name:
            (folder / previous["weights"]).unlink(missing_ok=True)


def load_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_checkpoint(folder: Path, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The saved state and weights, if any; raise if the run's config differs from the saved one."""
    state = load_state(folder)
    if state is None:
        return None
    resumable = keys_with_role("resumable")
    changed = sorted(k for k in set(config) | set(state["config"])
                     if k not in resumable and config.get(k) != state["config"].get(k))
    if changed:
        detail = ", ".join(f"{k}: {state['config'].get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {folder}: the run config changed ({detail}); "
                         "use another run-name, or the saved config")
    return state, load_file(str(folder / state["weights"]))
