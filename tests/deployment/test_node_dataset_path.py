"""A loopback deployment in which one SuperNode reads an own task (an image folder defined in a task file) from
its ``--node-config "dataset-path=..."``: the run completes, and neither the server's results nor its logs
(the SuperLink's and the streamed ServerApp log) contain that path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit.own_data import image_folder, write_task_file

from atmflow.deploy.loopback import LoopbackDeployment

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def test_a_supernode_reads_its_own_task_from_its_dataset_path(tmp_path: Path) -> None:
    secret = image_folder(tmp_path / "node-only-secret-folder", {"circle": 12, "square": 12}, test=6)
    # the server's task file names a source that does not exist: only the node's own path is read
    task_file = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image",
                                                                     "source": str(tmp_path / "not-here")}})
    out = tmp_path / "outputs"
    run_config = (f"output-dir='{out}' run-name='own' task-file='{task_file}' tasks='shapes,digits' strategy='ta' "
                  "budget-epochs=1 train-size=20 test-size=10 image-size=32 lambda-grid='0.5' head='random' "
                  "individual=false num-threads=1 node-wait-s=120")
    with LoopbackDeployment(tmp_path / "deploy", ("shapes", "digits"), data_paths={"shapes": str(secret)}) as dep:
        status, streamed = dep.run(ROOT, run_config, timeout_s=900)
        assert status == "finished:completed", streamed[-3000:]
    assert dep.leftovers() == []
    report = json.loads((out / "own" / "results.json").read_text())
    assert sorted(report["rounds"][0]["tasks"]) == ["digits", "shapes"]  # the shapes node read its folder
    written = "".join(p.read_text(errors="replace") for p in (out / "own").iterdir() if p.suffix in (".json", ".md"))
    server_side = written + streamed + (dep.workdir / "superlink.log").read_text()
    assert "node-only-secret-folder" not in server_side
