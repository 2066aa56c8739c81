"""The Flower ServerApp: validate the run config first, then run the experiment."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from atmflow.config import load_config
from atmflow.logs import timestamped_logs
from atmflow.server.experiment import run_experiment

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    timestamped_logs()
    run_experiment(grid, load_config(context.run_config))
