"""results.json says where its numbers came from (versions, code, machine, model, weights, head), and
report.md shows it in a header, names the head used and the one-shot method's row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atmflow.models.mobilenet import pretrained_weights_path
from atmflow.server.provenance import git_state, sha256_file
from atmflow.sim.local import run_inprocess


def test_a_run_records_its_provenance_and_reports_it(tiny: dict[str, Any]) -> None:
    run_inprocess({**tiny, "run-name": "prov", "tasks": "digits,mnist", "strategy": "ta", "budget-epochs": 1,
                   "lambda-grid": "0.5"})
    out = Path(tiny["output-dir"]) / "prov"
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert set(prov) >= {"date", "versions", "git", "cores", "num_threads", "device", "model_family", "model",
                         "pretrained", "head"}
    assert set(prov["versions"]) == {"torch", "flwr", "open_clip", "transformers", "atmflow"}
    assert prov["versions"]["torch"] and prov["versions"]["flwr"] == "1.42.0"
    assert prov["date"].endswith("+00:00") and prov["cores"] >= 1 and prov["device"] == "cpu"
    assert (prov["model_family"], prov["model"], prov["head"]) == ("mobilenet-v2", "mobilenet-v2", "probe")
    weights = prov["pretrained"]
    assert weights["source"] == "imagenet" and weights["file"] == str(pretrained_weights_path())
    assert weights["sha256"] == sha256_file(weights["file"])
    assert set(prov["git"]) == {"commit", "dirty"}

    report = (out / "report.md").read_text()
    assert "- Model: `mobilenet-v2` (family `mobilenet-v2`), pretrained weights `imagenet`" in report
    assert "- Head: `probe`" in report and "Head: auto" not in report
    assert "- Date (UTC): " in report and "torch " in report
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| pretrained", "| TA", "| individual"], rows
    assert "upper bound" not in " ".join(rows)


def test_git_state_never_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
