"""A study's probe runs with the run config's ``num-threads``, as a run's clients do (the epoch-gradients
probe once fine-tuned on every core beside other runs, which inflated their timings), and receives its
``params``, which are part of the run's key."""

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


def test_a_probe_gets_its_params_and_they_key_the_run(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def probe(overrides: dict[str, Any], folder: Path, **params: Any) -> dict[str, Any]:
        calls.append(params)
        return params

    settings = Settings(tmp_path / "out", tmp_path / "runs", tmp_path / "cache", probes={"probe": probe})
    pick = (Pick("m", "s", 1),)
    small, large = (RunSpec(0, {"num-threads": 1}, pick, kind="probe", params={"grid": g}) for g in (3, 20))
    assert small.key() != large.key()
    assert RunSpec(0, {}, pick, kind="probe").key() == RunSpec(0, {}, pick, kind="probe", params={}).key()
    folders = [execute(spec, settings) for spec in (small, large, small)]  # the third is cached
    assert calls == [{"grid": 3}, {"grid": 20}] and folders[0] == folders[2] != folders[1]
