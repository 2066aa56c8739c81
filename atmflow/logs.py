"""Log lines with timestamps: Flower's console handler (``flwr.common.logger``) prints none by default.

Called once by the ServerApp and by each ClientApp process; the clients log their progress (phase, task,
epoch, steps, loss, examples/s) through Flower's logger, so it reaches ``flwr run --stream`` and the
SuperNodes' logs with the time of every line.
"""

from __future__ import annotations

from flwr.common.logger import update_console_handler

_DONE: list[bool] = []


def timestamped_logs() -> None:
    """Switch on timestamps in Flower's console log lines (idempotent)."""
    if not _DONE:
        update_console_handler(timestamps=True)
        _DONE.append(True)
