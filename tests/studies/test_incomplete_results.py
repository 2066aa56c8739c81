"""A study never trusts a run folder's results.json blindly (issue 16): a truncated or partial file is
computed again; a complete one is reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atmflow.studies.runner import Pick, RunSpec, Settings, _discard_incomplete, execute, run_all, run_complete


def _settings(tmp_path: Path, calls: list[Path]) -> Settings:
    def probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
        calls.append(folder)
        return {"score": 0.5}

    return Settings(tmp_path / "out", tmp_path / "runs", tmp_path / "cache", probes={"probe": probe})


def test_a_truncated_results_json_is_computed_again(tmp_path: Path) -> None:
    calls: list[Path] = []
    settings = _settings(tmp_path, calls)
    spec = RunSpec(0, {"rounds": 1}, (Pick("m", "s", 1),), kind="probe")
    folder = execute(spec, settings)
    assert len(calls) == 1 and json.loads((folder / "results.json").read_text()) == {"score": 0.5}
    execute(spec, settings)
    assert len(calls) == 1  # complete: reused
    (folder / "results.json").write_text('{"score": 0.')  # a crash mid-write (what the atomic write prevents)
    assert run_all([spec], settings, "test")[1] == 1  # counted as still to compute
    assert len(calls) == 2 and json.loads((folder / "results.json").read_text()) == {"score": 0.5}


def test_an_experiment_is_complete_only_with_its_final_summary(tmp_path: Path) -> None:
    assert not run_complete(tmp_path, "experiment")  # no file
    (tmp_path / "results.json").write_text('{"rounds": [')
    assert not run_complete(tmp_path, "experiment")
    (tmp_path / "results.json").write_text('{"rounds": []}')
    assert not run_complete(tmp_path, "experiment") and run_complete(tmp_path, "probe")
    (tmp_path / "results.json").write_text('{"rounds": [], "final": {}}')
    assert run_complete(tmp_path, "experiment")
    (tmp_path / "results.json").write_text('[1, 2]')
    assert not run_complete(tmp_path, "probe")


def test_a_checkpoint_without_its_weights_is_dropped_before_recomputing(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"round": 2, "weights": "checkpoint-round2.safetensors"}))
    _discard_incomplete(tmp_path)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoint.json").exists()
    (tmp_path / "checkpoint.json").write_text(json.dumps({"round": 2, "weights": "w.safetensors"}))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    _discard_incomplete(tmp_path)
    assert (tmp_path / "checkpoint.json").exists()  # resumable: kept
