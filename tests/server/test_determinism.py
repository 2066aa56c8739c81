"""One config, one model: an in-process run gives bit-identical numbers and weights whatever the thread
settings of the environment (``OMP_NUM_THREADS``: Ray pins it to 1, a shell does not), and the same as a real
``flwr run`` simulation. The runs are subprocesses so that each starts its thread pools from its own
environment, as Ray's workers do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"tasks": "digits,mnist", "train-size": 60, "test-size": 20, "image-size": 32, "rounds": 1,
         "individual": False, "num-threads": 1, "run-name": "det", "node-wait-s": 5.0}
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TIMING_KEYS = {"wall_s", "wall-s", "talos-calibration-s"}


def _inprocess(out: Path, threads: str | None) -> Path:
    """Run ``SMALL`` in a fresh interpreter whose BLAS / OpenMP variables say ``threads`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in POOL_VARIABLES}
    if threads is not None:
        env.update(dict.fromkeys(POOL_VARIABLES, threads))
    code = ("import json, sys; from atmflow.sim.local import run_inprocess; "
            "run_inprocess({**json.loads(sys.argv[1]), 'output-dir': sys.argv[2]})")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(SMALL), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "det"


def comparable(value: Any) -> Any:
    """``results.json`` without what is allowed to differ: wall times and the output folder."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()
                if k not in TIMING_KEYS and k not in ("output-dir", "provenance")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical numbers in ``results.json`` and bit-identical final weights."""
    left, right = (comparable(json.loads((d / "results.json").read_text())) for d in (a, b))
    assert left == right
    wa, wb = load_file(a / "final_encoder.safetensors"), load_file(b / "final_encoder.safetensors")
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert differing == [], f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.heavy
def test_inprocess_runs_ignore_the_environments_thread_settings(tmp_path: Path) -> None:
    ray_like = _inprocess(tmp_path / "one-thread", "1")
    shell_like = _inprocess(tmp_path / "many-threads", str(max(2, os.cpu_count() or 2)))
    assert_same_run(ray_like, shell_like)


def test_flwr_run_simulation_matches_the_inprocess_run(tmp_path: Path) -> None:
    from atmflow.sim.flwr_local import run_simulation

    inprocess = _inprocess(tmp_path / "inprocess", None)
    out = tmp_path / "flwr"
    overrides = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower()}" for k, v in SMALL.items())
    code = run_simulation(ROOT, tmp_path / "flwr-home", f"{overrides} output-dir='{out}'", timeout_s=600)
    assert code == 0
    assert_same_run(inprocess, out / "det")
