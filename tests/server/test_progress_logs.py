"""Clients log their progress at INFO through Flower's logger (phase, task, epoch, steps, loss, examples/s),
and Flower's console lines carry timestamps."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from flwr.common.logger import LOGGER_NAME, ConsoleHandler

from atmflow.sim.local import run_inprocess


def test_clients_log_each_epoch_and_evaluation_with_phase_and_task(tiny: dict[str, Any],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    flower = logging.getLogger(LOGGER_NAME)
    flower.addHandler(caplog.handler)  # Flower's logger may not propagate to the root logger
    try:
        run_inprocess({**tiny, "run-name": "logs", "tasks": "digits,mnist", "strategy": "pa-atm", "rounds": 1,
                       "epochs-per-round": 2, "budget-epochs": 1})
    finally:
        flower.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    epoch = re.compile(r"^round 1 train, task (digits|mnist): epoch (\d)/2, (\d+) steps, loss [\d.]+, "
                       r"[\d.]+ examples/s$")
    seen = {(m.group(1), m.group(2)) for m in map(epoch.match, lines) if m}
    assert seen == {(t, e) for t in ("digits", "mnist") for e in ("1", "2")}, lines
    assert any(line.startswith("pretrained evaluation, task digits, evaluation on test: ") and
               "examples/s" in line for line in lines), lines
    assert any(line.startswith("individual fine-tuning, task mnist: epoch 1/1") for line in lines), lines
    handlers = [h for h in flower.handlers if isinstance(h, ConsoleHandler)]
    assert handlers and all(h.timestamps for h in handlers)
