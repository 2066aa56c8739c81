"""Study ``talos`` (paper 004): TaLoS sparse fine-tuning versus full fine-tuning under TA and PA-ATM, task
negation and the weight-disentanglement error.

Per seed and fine-tuning mode (``finetune = "full"`` and ``"talos"``), at equal budget: TA (one
round of ``budget`` epochs, lambda chosen on validation) and PA-ATM (``budget`` rounds x 1 epoch).
Rows: per-task and average test accuracy, normalized accuracy (each mode's own individual models:
the TA run's fine-tuned models, which PA-ATM's individual exchange reuses through the clients'
cache), the bytes one client sends per round (the encoded task vector, :mod:`atmflow.transport`),
the fine-tuning time per optimizer step (client ``wall-s / steps``, mask calibration excluded) and
the TaLoS calibration time per train message.

From the TA run's task vectors (the clients' cache, no new fine-tuning), per seed and mode: task
negation of every task but ``negation-control`` (:mod:`atmflow.analyses.negation`, paper 004 Section 5)
and the weight-disentanglement error xi of the pair ``disentanglement-tasks`` (:mod:`atmflow.analyses.disentanglement`,
paper 004 Eq. 10, on a ``disentanglement-grid`` x ``disentanglement-grid`` grid over ``[-limit, limit]^2``).
The same cache also serves ``atmflow negate`` and ``atmflow disentanglement`` (``--cache-dir``).

Usage: ``python -m atmflow.studies talos [--seeds 0 1 2] [--options "budget=10 disentanglement-grid=11"]``
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from atmflow import protocol
from atmflow.analyses import disentanglement, negation
from atmflow.config import ConfigError, load_config
from atmflow.studies.methods import oneshot, pa_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, Row, RunSpec, experiment_rows
from atmflow.studies.study import RunOutput, Study, StudyOptions, str_list
from atmflow.studies.tables import Table, compare, markdown, method_table

MODES = ("full", "talos")
NEGATION_METRICS = ("target-pretrained", "target-negated", "control-pretrained", "control-negated")


class Options(StudyOptions):
    budget: int = 10  # epochs of fine-tuning per task (TA: once; PA-ATM: rounds of 1 epoch)
    modes: tuple[str, ...] = MODES
    # the task kept at >= 95% of its pretrained accuracy while each other task is negated; "" = no negation
    negation_control: str = "animal-mnist"
    # the task pair of the disentanglement error; "" = none
    disentanglement_tasks: tuple[str, ...] = ("mnist", "fashion-mnist")
    disentanglement_grid: int = Field(20, ge=2)  # points per axis (paper 004, A.1: 20)
    disentanglement_limit: float = Field(3.0, gt=0)  # the grid spans [-limit, limit] (paper: 3)
    disentanglement_examples: int = Field(2048, ge=1)  # test points per task, a seeded random subset (paper: 2,048)

    _modes = field_validator("modes", mode="before")(lambda v: _check_modes(str_list(v)))
    _pair = field_validator("disentanglement_tasks", mode="before")(lambda v: _check_pair(str_list(v)))


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    wrong = [m for m in modes if m not in MODES]
    if wrong:
        raise ValueError(f"unknown fine-tuning mode(s) {wrong}; allowed: {', '.join(MODES)}")
    return tuple(modes)


def _check_pair(tasks: Sequence[str]) -> tuple[str, ...]:
    if len(tasks) not in (0, 2) or len(set(tasks)) != len(tasks):
        raise ValueError(f"give two different tasks, e.g. 'mnist,fashion-mnist', or '' for none; got {list(tasks)}")
    return tuple(tasks)


def _check_tasks(opts: Options, base: dict[str, Any]) -> None:
    """The negation control and the disentanglement pair must be tasks of the runs (checked before any work)."""
    tasks = list(load_config(base).tasks)
    named = {"negation-control": [opts.negation_control] if opts.negation_control else [],
             "disentanglement-tasks": list(opts.disentanglement_tasks)}
    for key, names in named.items():
        wrong = [t for t in names if t not in tasks]
        if wrong:
            raise ConfigError(f"study option {key}: {wrong} is not among the run's tasks {tasks} "
                              f"(set it to some of them, or to '' to leave this analysis out)")


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    """Per seed and mode: TA (it fills the clients' cache), PA-ATM, then the negation and disentanglement probes
    on the TA run's task vectors."""
    _check_tasks(opts, base)
    specs: list[RunSpec] = []
    for seed in seeds:
        for mode in opts.modes:
            with_mode = {**base, "finetune": mode}
            specs.append(oneshot("TA", opts.budget, seed, with_mode, mode, with_bounds=True))
            specs.append(pa_atm(opts.budget, 1, seed, with_mode, [Pick(f"PA-ATM{opts.budget}", mode, opts.budget)]))
            task_vectors = {**with_mode, "strategy": "oneshot", "budget-epochs": opts.budget}
            if opts.negation_control:
                specs.append(RunSpec(seed, task_vectors, (Pick("negation", mode, 1),), kind=negation.KIND,
                                     params={"control": opts.negation_control}))
            if opts.disentanglement_tasks:
                specs.append(RunSpec(seed, task_vectors, (Pick("disentanglement", mode, 1),),
                                     kind=disentanglement.KIND,
                                     params={"tasks": list(opts.disentanglement_tasks),
                                             "grid": opts.disentanglement_grid,
                                             "limit": opts.disentanglement_limit,
                                             "examples": opts.disentanglement_examples}))
    return specs


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """A probe's rows (negation: :func:`_negation_rows`; disentanglement: its mean xi), or an experiment's:
    :func:`~atmflow.studies.runner.experiment_rows`, plus the costs of the run's method row: MB one client
    sends per round, seconds per fine-tuning step and seconds of TaLoS calibration per train message."""
    if spec.kind == negation.KIND:
        return _negation_rows(study, spec, folder, results)
    if spec.kind == disentanglement.KIND:
        pick = spec.picks[0]
        return [Row(study, pick.setting, pick.method, spec.seed, "avg", "mean-xi", results["mean_xi"], folder.name)]
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


def _negation_rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """Per target: alpha and the target and control test accuracies before and after; task ``mean``: their
    means over the targets."""
    pick = spec.picks[0]
    targets = results["targets"]

    def row(task: str, metric: str, value: float) -> Row:
        return Row(study, pick.setting, pick.method, spec.seed, task, metric, float(value), folder.name)

    out = [row(t["target"], metric, t[metric.replace("-", "_")]) for t in targets
           for metric in ("alpha", *NEGATION_METRICS)]
    return out + [row("mean", m, statistics.fmean(t[m.replace("-", "_")] for t in targets)) for m in NEGATION_METRICS]


def _negation_report(table: Table, opts: Options) -> list[str]:
    modes = [m for m in opts.modes if table.has(m, "negation", "mean", "target-negated")]
    if not modes:
        return []
    targets = sorted({r.task for r in table.rows if r.method == "negation" and r.task != "mean"})
    body = []
    for mode in modes:
        for target in [*targets, "mean"]:
            def cell(metric: str, mode: str = mode, target: str = target) -> str:
                return table.cell(mode, "negation", target, metric)

            body.append([mode, f"**{target}**" if target == "mean" else target,
                         "" if target == "mean" else cell("alpha"),
                         f"{cell('target-pretrained')} -> {cell('target-negated')}",
                         f"{cell('control-pretrained')} -> {cell('control-negated')}"])
    text = ["## Task negation (paper 004, Section 5)", "",
            f"theta_0 - alpha tau_t for each target t; alpha chosen on validation (the grid {{0, 0.05, ..., 1}}, "
            f"x 1 / (1 - sparsity) for TaLoS) as the one with the lowest target accuracy that keeps the control task "
            f"`{opts.negation_control}` at >= 95% of its pretrained validation accuracy. Test accuracy:", "",
            markdown(["fine-tuning", "target", "alpha", "target acc. pretrained -> negated",
                      "control acc. pretrained -> negated"], body), ""]
    if set(MODES) <= set(modes):
        text += ["Differences (mean over the targets, test accuracy after negation):", "",
                 "- target: " + compare("TaLoS", table.values("talos", "negation", "mean", "target-negated"),
                                        "full", table.values("full", "negation", "mean", "target-negated")),
                 "- control: " + compare("TaLoS", table.values("talos", "negation", "mean", "control-negated"),
                                         "full", table.values("full", "negation", "mean", "control-negated")), ""]
    return text


def _disentanglement_report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> list[str]:
    """Mean xi per mode over seeds, and one heatmap per mode of the seed-averaged xi matrix."""
    per_mode: dict[str, list[dict[str, Any]]] = {}
    for spec, _, results in runs:
        if spec.kind == disentanglement.KIND:
            per_mode.setdefault(spec.picks[0].setting, []).append(results)
    if not per_mode:
        return []
    grid, limit = opts.disentanglement_grid, opts.disentanglement_limit
    pair = ", ".join(opts.disentanglement_tasks)
    text = [f"## Weight-disentanglement error (paper 004, Eq. 10), {pair}", "",
            f"xi(alpha_1, alpha_2) on a {grid} x {grid} grid over [-{limit:g}, {limit:g}]^2, "
            f"{opts.disentanglement_examples} test points per task at most (0 = adding one task vector never changes "
            "the other task's predictions, 2 = it always does). Mean xi over the grid:", "",
            markdown(["fine-tuning", "mean xi"], [[m, table.cell(m, "disentanglement", "avg", "mean-xi")]
                                                  for m in per_mode]), ""]
    if set(MODES) <= set(per_mode):
        text += ["- " + compare("TaLoS", table.values("talos", "disentanglement", "avg", "mean-xi"),
                                "full", table.values("full", "disentanglement", "avg", "mean-xi")), ""]
    mean_maps = {}
    for mode, results in per_mode.items():  # the seeds' xi matrices, averaged cell by cell
        xi = [[statistics.fmean(cell) for cell in zip(*rows, strict=True)]
              for rows in zip(*(r["xi"] for r in results), strict=True)]
        mean_maps[mode] = {"tasks": results[0]["tasks"], "alphas": results[0]["alphas"], "xi": xi,
                           "mean_xi": statistics.fmean(v for line in xi for v in line)}
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / "disentanglement.png"
    disentanglement.plot(mean_maps, path, f"weight-disentanglement error xi, mean over {len(table.seeds)} seed(s) "
                         "(lighter = more disentangled)")
    text.append(f"![disentanglement]({path.relative_to(fig_dir.parent)})")
    return text


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    atm = f"PA-ATM{opts.budget}"
    extra = [("normalized", "normalized"), ("mb-per-client-round", "MB per client per round"),
             ("s-per-step", "s per fine-tuning step"), ("calibration-s", "s calibration per train message")]
    text = [f"## TaLoS versus full fine-tuning, {opts.budget} epochs of budget", ""]
    for mode in opts.modes:
        text += [f"### fine-tuning `{mode}`", "",
                 method_table(table, mode, [PRETRAINED, "TA", atm, INDIVIDUAL], extra), ""]
    if set(MODES) <= set(opts.modes):
        text += ["Differences (average test accuracy; normalized accuracy, each mode against its own individual "
                 "models, as paper 004 Table 1):", ""]
        for method in ("TA", atm, INDIVIDUAL):
            text.append(f"- {method}: " + compare("TaLoS", table.values("talos", method), "full",
                                                  table.values("full", method)))
        for method in ("TA", atm):
            normalized = [table.values(mode, method, "avg", "normalized") for mode in ("talos", "full")]
            text.append(f"- {method}, normalized: " + compare("TaLoS", normalized[0], "full", normalized[1]))
        text.append("")
    text += _negation_report(table, opts) + _disentanglement_report(table, opts, runs, fig_dir)
    return "\n".join(text)


STUDY = Study("talos", "TaLoS sparse fine-tuning versus full fine-tuning: TA, PA-ATM, task negation and the "
              "weight-disentanglement error (paper 004)", Options, plan, report, rows=rows,
              probes={negation.KIND: negation.run_probe, disentanglement.KIND: disentanglement.run_probe})
