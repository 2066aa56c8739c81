"""A Flower run's final status, as the SuperLink reports it (``flwr ls --format json``), and its one error.

``flwr run ... --stream`` exits 0 whenever the run was submitted, even when the ServerApp raised; the
SuperLink knows better: its status of the run (``finished:completed``, ``finished:failed``,
``finished:stopped``; ``pending``, ``starting``, ``running`` before that) and, for a failed run, the
ServerApp's exception (``status-details``). The launchers (:mod:`atmflow.sim.flwr_local`,
:mod:`atmflow.deploy.loopback`) exit non-zero unless the run completed, and print that error once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

COMPLETED = "finished:completed"
SERVERAPP_PREFIX = "ServerApp failed with exception:"
# Flower's status details when the ServerApp process stops reporting (killed, out of memory): what to add
SERVERAPP_GONE = "No heartbeat received from the task"
SERVERAPP_GONE_HINT = ("the ServerApp process stopped without a word (killed, or out of memory; see the SuperLink "
                       "machine's log); the checkpoint of the last completed round stays, submit the run again "
                       "with resume=true to continue from it")
STARTED = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    status: str  # e.g. finished:completed, finished:failed, running
    details: str = ""  # the SuperLink's status details: the ServerApp's exception for a failed run

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    def error(self) -> str:
        """One line for a person: what failed and why (empty for a completed run)."""
        if self.completed:
            return ""
        why = self.details.strip()
        if why.startswith(SERVERAPP_PREFIX):
            why = why[len(SERVERAPP_PREFIX):].strip()
        if why == SERVERAPP_GONE:
            why = f"{why}: {SERVERAPP_GONE_HINT}"
        return f"run {self.run_id} {self.status}" + (f": {why}" if why else "")


def started_run_id(output: str) -> str | None:
    """The run id that ``flwr run`` printed (``Successfully started run <id>``), if it did."""
    found = STARTED.search(output)
    return found.group(1) if found else None


def parse_run_status(ls_json: str, run_id: str | None = None) -> RunStatus:
    """The status of run ``run_id`` (default: the latest run) from ``flwr ls --format json``'s output.

    Raises ``ValueError`` naming the output when it holds no such run (e.g. ``flwr ls`` itself failed)."""
    try:
        data = json.loads(ls_json)
        runs = data["runs"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"flwr ls gave no run list: {ls_json.strip()[:500]!r}") from err
    if run_id is not None:
        runs = [r for r in runs if str(r.get("run-id")) == str(run_id)]
    if not runs:
        raise ValueError(f"flwr ls lists no run {run_id or ''}: {ls_json.strip()[:500]!r}".replace("  ", " "))
    run = max(runs, key=lambda r: (str(r.get("pending-at") or ""), str(r.get("run-id"))))
    return RunStatus(str(run.get("run-id")), str(run.get("status", "")), str(run.get("status-details") or ""))
