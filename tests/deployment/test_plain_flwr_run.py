"""Plain ``flwr run .`` as a Flower user types it: a fresh ``FLWR_HOME``, Flower's default local federation
(2 simulated SuperNodes, started by ``flwr run`` itself) and a run with 3 tasks. It finishes, and its relative
``output-dir`` lands in the app folder. The app is copied to a temporary folder, so nothing is written here;
the local SuperLink that ``flwr run`` leaves behind is stopped by PID (every process with this FLWR_HOME)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from atmflow.processes import flwr_bin, flwr_env, free_port, processes_with_env, stop_processes_with_env

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def test_plain_flwr_run_on_the_default_local_federation(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "pyproject.toml", app)
    shutil.copytree(ROOT / "atmflow", app / "atmflow", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "flwr-home"  # fresh: flwr creates config.toml with its default local federation
    overrides = ("tasks='digits,mnist,animal-mnist' train-size=60 test-size=20 image-size=32 rounds=1 "
                 "individual=false num-threads=1 run-name='plain' output-dir='outputs'")
    # Flower's own variables for its local SuperLink's ports (default 39091 / 39093): free ones, so that a local
    # SuperLink another flwr run left on this machine is not reused
    env = {**flwr_env(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    try:
        done = subprocess.run([flwr_bin("flwr"), "run", ".", "--run-config", overrides, "--stream"], cwd=app, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
    finally:
        stop_processes_with_env("FLWR_HOME", str(home))
    assert processes_with_env("FLWR_HOME", str(home)) == []
    assert "2 SuperNode(s) for 3 tasks" in done.stdout + done.stderr, done.stdout[-3000:]
    results = app / "outputs" / "plain" / "results.json"
    assert done.returncode == 0 and results.is_file(), (done.stdout[-3000:], done.stderr[-3000:])
    assert sorted(json.loads(results.read_text())["rounds"][0]["tasks"]) == ["animal-mnist", "digits", "mnist"]
    assert os.path.getsize(app / "outputs" / "plain" / "final_encoder.safetensors") > 0
