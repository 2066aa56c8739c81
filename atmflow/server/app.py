"""The Flower ServerApp: validate the run config first (a relative ``output-dir`` is taken in the app folder:
:func:`atmflow.app_config.server_output_dir`), then run the experiment (in a simulation with more or fewer
SuperNodes than tasks, through task addresses: :mod:`atmflow.server.routing`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from atmflow.app_config import server_output_dir
from atmflow.config import load_config
from atmflow.logs import timestamped_logs
from atmflow.privacy.scope import uses_secagg
from atmflow.server.experiment import run_experiment
from atmflow.server.routing import task_grid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    timestamped_logs()
    cfg = server_output_dir(load_config(context.run_config), grid.run.fab_id)
    # SecAgg+ masks between nodes: a node answering for several tasks would hold their vectors in the clear
    secure = "privacy='secagg' needs one SuperNode per task" if uses_secagg(cfg.privacy) else None
    run_experiment(task_grid(grid, cfg.tasks, one_node_per_task=secure), cfg)
