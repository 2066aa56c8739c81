"""Study ``talos`` (paper 004): TaLoS sparse fine-tuning versus full fine-tuning under TA and PA-ATM.

Per seed and fine-tuning mode (``finetune = "full"`` and ``"talos"``), at equal budget: TA (one
round of ``budget`` epochs, lambda chosen on validation) and PA-ATM (``budget`` rounds x 1 epoch).
Rows: per-task and average test accuracy, normalized accuracy (each mode's own individual models:
the TA run's fine-tuned models, which PA-ATM's individual exchange reuses through the clients'
cache), the bytes one client sends per round (the encoded task vector, :mod:`atmflow.transport`),
the fine-tuning time per optimizer step (client ``wall-s / steps``, mask calibration excluded) and
the TaLoS calibration time per train message. The clients' cache of the study root also serves
``atmflow negate`` and ``atmflow disentanglement`` with the same task vectors (``--cache-dir``).

Usage: ``python -m atmflow.studies talos [--seeds 0 1 2] [--options "budget=10"] [--run-config "..."]``
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from atmflow import protocol
from atmflow.studies.methods import oneshot, pa_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, Row, RunSpec, experiment_rows
from atmflow.studies.study import RunOutput, Study, StudyOptions, str_list
from atmflow.studies.tables import Table, compare, method_table

MODES = ("full", "talos")


class Options(StudyOptions):
    budget: int = 10  # epochs of fine-tuning per task (TA: once; PA-ATM: rounds of 1 epoch)
    modes: tuple[str, ...] = MODES

    _modes = field_validator("modes", mode="before")(lambda v: _check_modes(str_list(v)))


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    wrong = [m for m in modes if m not in MODES]
    if wrong:
        raise ValueError(f"unknown fine-tuning mode(s) {wrong}; allowed: {', '.join(MODES)}")
    return tuple(modes)


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    specs: list[RunSpec] = []
    for seed in seeds:
        for mode in opts.modes:
            with_mode = {**base, "finetune": mode}
            specs.append(oneshot("TA", opts.budget, seed, with_mode, mode, with_bounds=True))
            specs.append(pa_atm(opts.budget, 1, seed, with_mode, [Pick(f"PA-ATM{opts.budget}", mode, opts.budget)]))
    return specs


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """:func:`~atmflow.studies.runner.experiment_rows`, plus the costs of the run's method row: MB one client
    sends per round, seconds per fine-tuning step and seconds of TaLoS calibration per train message."""
    out = experiment_rows(study, spec, folder, results)
    pick = spec.picks[0]
    # a cache hit carries the metrics of the fine-tuning that filled the cache: the same measurement
    trained = [m for r in results["rounds"] for m in r["train"].values()]
    costs = {"mb-per-client-round": results["final"]["bytes_per_client_round"] / 1e6}
    if trained:
        costs["s-per-step"] = statistics.fmean(m[protocol.WALL_S] / m[protocol.STEPS] for m in trained)
    calibration = [m[protocol.TALOS_CALIBRATION_S] for m in trained if protocol.TALOS_CALIBRATION_S in m]
    if calibration:
        costs["calibration-s"] = statistics.fmean(calibration)
    return out + [Row(study, pick.setting, pick.method, spec.seed, "avg", metric, value, folder.name)
                  for metric, value in costs.items()]


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    atm = f"PA-ATM{opts.budget}"
    extra = [("normalized", "normalized"), ("mb-per-client-round", "MB per client per round"),
             ("s-per-step", "s per fine-tuning step"), ("calibration-s", "s calibration per train message")]
    text = [f"## TaLoS versus full fine-tuning, {opts.budget} epochs of budget", ""]
    for mode in opts.modes:
        text += [f"### fine-tuning `{mode}`", "",
                 method_table(table, mode, [PRETRAINED, "TA", atm, INDIVIDUAL], extra), ""]
    if set(MODES) <= set(opts.modes):
        text.append("Differences (average test accuracy):")
        text.append("")
        for method in ("TA", atm, INDIVIDUAL):
            text.append(f"- {method}: " + compare("TaLoS", table.values("talos", method), "full",
                                                  table.values("full", method)))
    return "\n".join(text)


STUDY = Study("talos", "TaLoS sparse fine-tuning versus full fine-tuning under TA and PA-ATM (paper 004)", Options,
              plan, report, rows=rows)
