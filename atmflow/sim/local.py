"""Run one experiment in this process (no Ray, no SuperLink): for tests, benchmarks and studies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.server.experiment import run_experiment
from atmflow.server.results import RunResults
from atmflow.sim.inprocess import InProcessGrid


def run_inprocess(overrides: Mapping[str, Any]) -> RunResults:
    """Validate ``overrides`` (kebab-case run-config keys) and run them with one in-process node per task."""
    cfg = load_config(overrides)
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    return run_experiment(grid, cfg)
