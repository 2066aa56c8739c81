"""The Flower ServerApp: validate the run config first, then run the experiment (in a simulation with more or
fewer SuperNodes than tasks, through task addresses: :mod:`atmflow.server.routing`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from atmflow.config import load_config
from atmflow.logs import timestamped_logs
from atmflow.server.experiment import run_experiment
from atmflow.server.routing import task_grid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    timestamped_logs()
    cfg = load_config(context.run_config)
    run_experiment(task_grid(grid, cfg.tasks), cfg)
