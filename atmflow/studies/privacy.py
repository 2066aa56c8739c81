"""Study ``privacy``: final accuracy against the differential-privacy budget epsilon, for TA and PA-ATM at equal
budget, and the cost of a DP-SGD step against a plain one.

Per seed and epsilon (``epsilons``, default 1, 4, 16 and inf = no DP): TA (one round of ``budget`` epochs,
lambda chosen on validation) and PA-ATM (``budget`` rounds x 1 epoch), each client with ``privacy = "dp"`` and
``dp-epsilon`` = epsilon over its whole run (:mod:`atmflow.privacy.budget`). Equal budget: both methods take
``budget`` epochs of DP-SGD per client, so the same noise multiplier. PA-ATM runs with ``individual = false``
(an individual fine-tuning would be ``budget`` more DP epochs, composed into the same epsilon); the
individual row comes from the TA run, whose fine-tuned models are the individual ones at no extra cost.

Rows: per-task and average test accuracy, the epsilon each run spent (largest over its tasks), and the
seconds per fine-tuning step (client ``wall-s / steps``): DP-SGD against plain fine-tuning at the same size.

Usage: ``python -m atmflow.studies privacy [--seeds 0 1 2] [--options "budget=10 epsilons='1,4,16,inf'"]``
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from atmflow import protocol
from atmflow.studies.figures import curves
from atmflow.studies.methods import oneshot, pa_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, Row, RunSpec, experiment_rows
from atmflow.studies.study import RunOutput, Study, StudyOptions, str_list
from atmflow.studies.tables import Table, compare, markdown, method_table


class Options(StudyOptions):
    budget: int = 10  # epochs of DP-SGD per client (TA: once; PA-ATM: rounds of 1 epoch)
    epsilons: tuple[float, ...] = (1.0, 4.0, 16.0, math.inf)  # inf: no DP (privacy = "none")

    _epsilons = field_validator("epsilons", mode="before")(lambda v: _check_epsilons(str_list(v)))


def _check_epsilons(values: Sequence[Any]) -> tuple[float, ...]:
    numbers = tuple(float(v) for v in values)
    if not numbers or any(not v > 0 or math.isnan(v) for v in numbers):
        raise ValueError("epsilons must be numbers > 0 (inf: no differential privacy)")
    return numbers


def setting(eps: float) -> str:
    return "no DP" if math.isinf(eps) else f"epsilon={eps:g}"


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    specs: list[RunSpec] = []
    for seed in seeds:
        for eps in opts.epsilons:
            private = base if math.isinf(eps) else {**base, "privacy": "dp", "dp-epsilon": eps}
            specs.append(oneshot("TA", opts.budget, seed, private, setting(eps), with_bounds=True))
            specs.append(pa_atm(opts.budget, 1, seed, {**private, "individual": False},
                                [Pick(f"PA-ATM{opts.budget}", setting(eps), opts.budget)]))
    return specs


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """:func:`~atmflow.studies.runner.experiment_rows`, plus for the run's method row the epsilon it spent
    (the largest over its tasks; 0 without DP) and the seconds per fine-tuning step."""
    out = experiment_rows(study, spec, folder, results)
    pick = spec.picks[0]
    trained = [m for r in results["rounds"] for m in r["train"].values()]
    spent = [m.get(protocol.DP_EPSILON, 0.0) for m in results["rounds"][-1]["train"].values()]
    costs = {"epsilon": max(spent), "s-per-step": statistics.fmean(m[protocol.WALL_S] / m[protocol.STEPS]
                                                                   for m in trained)}
    return out + [Row(study, pick.setting, pick.method, spec.seed, "avg", metric, value, folder.name)
                  for metric, value in costs.items()]


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    atm = f"PA-ATM{opts.budget}"
    settings = [setting(e) for e in opts.epsilons]
    header = ["method", *settings]
    body = [[m, *(table.cell(s, m) if table.has(s, m) else "-" for s in settings)] for m in ("TA", atm, INDIVIDUAL)]
    spent = [[m, *(table.cell(s, m, metric="epsilon", digits=2) if table.has(s, m, metric="epsilon") else "-"
                   for s in settings)] for m in ("TA", atm)]
    cost = [[m, *(table.cell(s, m, metric="s-per-step") if table.has(s, m, metric="s-per-step") else "-"
                  for s in settings)] for m in ("TA", atm)]
    text = [f"## Average test accuracy against epsilon, {opts.budget} epochs of DP-SGD per client", "",
            markdown(header, body), "", "Epsilon spent (largest over the tasks; each client's delta = 1 / its "
            "training examples):", "", markdown(header, spent), "",
            "Seconds per fine-tuning step (DP-SGD against plain fine-tuning; one CPU thread per run):", "",
            markdown(header, cost), ""]
    finite = [e for e in opts.epsilons if not math.isinf(e)]
    text += [f"- TA against {atm} at {setting(e)}: " + compare("TA", table.values(setting(e), "TA"), atm,
                                                              table.values(setting(e), atm))
             for e in opts.epsilons if table.has(setting(e), "TA") and table.has(setting(e), atm)]
    if finite:
        methods = [m for m in ("TA", atm, INDIVIDUAL) if all(table.has(setting(e), m) for e in finite)]
        series = {m: (finite, [table.mean(setting(e), m) for e in finite],
                      [_sd(table.values(setting(e), m)) for e in finite]) for m in methods}
        plain = {f"{m}, no DP": table.mean(setting(math.inf), m) for m in ("TA", atm)
                 if table.has(setting(math.inf), m)}
        if table.has(setting(finite[0]), PRETRAINED):
            plain[PRETRAINED] = table.mean(setting(finite[0]), PRETRAINED)
        path = curves(fig_dir / "accuracy_per_epsilon.png", "Average test accuracy against the DP budget",
                      "epsilon (per client, whole run; log scale)", "average test accuracy", series, plain,
                      log_x=True)
        text += ["", f"![accuracy per epsilon](figures/{path.name})"]
    for s in settings:
        text += ["", f"### {s}", "", method_table(table, s, [PRETRAINED, "TA", atm, INDIVIDUAL])]
    return "\n".join(text)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


STUDY = Study("privacy", "accuracy against the differential-privacy budget epsilon, TA and PA-ATM at equal budget",
              Options, plan, report, rows=rows)
