"""A SuperNode's own data location (``--node-config "task=... dataset-path=..."``) is used on that node and
never leaves it: no results file, report or server log line carries the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from testkit.own_data import image_folder, write_task_file

from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.server.experiment import run_experiment
from atmflow.sim.inprocess import InProcessGrid


def test_node_dataset_path_stays_on_the_node(tiny: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    secret = image_folder(tmp_path / "node-only-secret-folder", {"circle": 12, "square": 12}, test=6)
    # the server's task file names a source that does not exist on the server: only the node's path is read
    task_file = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image",
                                                                     "source": str(tmp_path / "not-here")}})
    cfg = load_config({**tiny, "task-file": str(task_file), "tasks": "shapes,digits", "strategy": "ta",
                       "budget-epochs": 1, "train-size": 20, "test-size": 10, "lambda-grid": "0.5", "head": "random",
                       "individual": False, "run-name": "node-data"})
    grid = InProcessGrid(client_app, cfg.to_run_config(), len(cfg.tasks))
    node = next(iter(grid.contexts.values()))
    node.node_config.update({"task": "shapes", "dataset-path": str(secret)})
    res = run_experiment(grid, cfg)
    assert sorted(res.pretrained) == ["digits", "shapes"]
    out = Path(tiny["output-dir"]) / "node-data"
    written = "".join(p.read_text(errors="replace") for p in out.iterdir() if p.suffix in (".json", ".md"))
    assert "results.json" in {p.name for p in out.iterdir()} and "shapes" in written
    assert "node-only-secret-folder" not in written
    printed = capsys.readouterr()
    assert "node-only-secret-folder" not in printed.out + printed.err


def test_a_missing_node_path_is_named_on_the_node_only(tiny: dict[str, Any], tmp_path: Path) -> None:
    task_file = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image", "source": "x"}})
    cfg = load_config({**tiny, "task-file": str(task_file), "tasks": "shapes,digits", "strategy": "ta",
                       "budget-epochs": 1, "train-size": 20, "test-size": 10, "head": "random"})
    grid = InProcessGrid(client_app, cfg.to_run_config(), len(cfg.tasks))
    next(iter(grid.contexts.values())).node_config.update(
        {"task": "shapes", "dataset-path": str(tmp_path / "node-only-secret-folder")})
    with pytest.raises(RuntimeError) as err:
        run_experiment(grid, cfg)
    assert "task 'shapes': no folder <this node's dataset-path>" in str(err.value)
    assert "node-only-secret-folder" not in str(err.value)
