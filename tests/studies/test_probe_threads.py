"""A study's probe runs with the run config's ``num-threads``, as a run's clients do: the epoch-gradients
probe once fine-tuned on every core beside other runs, which inflated their timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from atmflow.studies.runner import Pick, RunSpec, Settings, execute
from atmflow.threads import pin_threads


def test_a_probe_runs_with_the_configured_thread_count(tmp_path: Path) -> None:
    seen: list[int] = []

    def probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
        seen.append(torch.get_num_threads())
        return {"threads": seen[-1]}

    before = torch.get_num_threads()
    settings = Settings(tmp_path / "out", tmp_path / "runs", tmp_path / "cache", probes={"probe": probe})
    try:
        torch.set_num_threads(2)
        execute(RunSpec(0, {"num-threads": 1}, (Pick("m", "s", 1),), kind="probe"), settings)
    finally:
        pin_threads(before)
    assert seen == [1]
