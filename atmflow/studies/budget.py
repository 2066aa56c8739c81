"""Study ``budget`` (paper 001, Table 2; paper 000, Table 3): methods as the budget K varies.

For each K: the one-shot methods merge task vectors fine-tuned for K epochs (one shared fine-tuning
per K and seed); PA-ATM spends the same K epochs as K rounds x 1 epoch (round K of one PA-ATM run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from atmflow.studies import figures
from atmflow.studies.methods import check_methods, oneshot, pa_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions, int_list, str_list
from atmflow.studies.tables import Table, compare, markdown, mean_sd, method_table


class Options(StudyOptions):
    budgets: tuple[int, ...] = (2, 4, 10)  # K: epochs per task
    methods: tuple[str, ...] = ("TA", "TIES", "Breadcrumbs", "DARE", "TATR")

    _budgets = field_validator("budgets", mode="before")(lambda v: sorted(set(int_list(v))))
    _methods = field_validator("methods", mode="before")(lambda v: check_methods(str_list(v)))


def setting(k: int) -> str:
    return f"K={k}"


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    specs: list[RunSpec] = []
    top = max(opts.budgets)
    for seed in seeds:
        for k in opts.budgets:
            specs += [oneshot(m, k, seed, base, setting(k), with_bounds=i == 0) for i, m in enumerate(opts.methods)]
        specs.append(pa_atm(top, 1, seed, base, [Pick("PA-ATM", setting(k), k) for k in opts.budgets], budget=top))
    return specs


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    rows = [*opts.methods, "PA-ATM"]
    text = ["## Average accuracy as the budget varies", "",
            "Average test accuracy over tasks; K = fine-tuning epochs per task (one-shot: K epochs once; "
            "PA-ATM: K rounds x 1 epoch). The individual row is each task's own K-epoch model.", "",
            markdown(["method", *(setting(k) for k in opts.budgets)],
                     [[m, *(table.cell(setting(k), m) for k in opts.budgets)]
                      for m in [PRETRAINED, *rows, INDIVIDUAL]]),
            "", "Differences at each budget:", ""]
    for k in opts.budgets:
        best = max(opts.methods, key=lambda m, k=k: table.mean(setting(k), m))
        text.append(f"- K={k}: " + compare("PA-ATM", table.values(setting(k), "PA-ATM"), f"best one-shot ({best})",
                                           table.values(setting(k), best)))
    first, last = opts.budgets[0], opts.budgets[-1]
    for m in rows:
        text.append(f"- {m}, K={last} vs K={first}: " + compare(f"K={last}", table.values(setting(last), m),
                                                                 f"K={first}", table.values(setting(first), m)))
    text += ["", "Per task, in the layout of paper 001, Table 2:", ""]
    tasks = table.tasks()
    for k in opts.budgets:
        text += [f"### K = {k}", "", method_table(table, setting(k), rows), ""]
        radar = figures.radar(fig_dir / f"radar_K{k}.png", f"Per-task accuracy at K = {k}", tasks,
                              {m: {t: table.mean(setting(k), m, t) for t in tasks} for m in rows
                               if table.has(setting(k), m)})
        text += [f"![radar K={k}]({radar.relative_to(fig_dir.parent)})", ""]
    series = {}
    for m in rows:
        ks = [k for k in opts.budgets if table.has(setting(k), m)]
        series[m] = (ks, *mean_sd([table.values(setting(k), m) for k in ks]))
    curve = figures.curves(fig_dir / "accuracy_per_budget.png", "Average accuracy as the budget varies",
                           "budget K (epochs per task)", "average test accuracy", series)
    text.append(f"![accuracy per budget]({curve.relative_to(fig_dir.parent)})")
    return "\n".join(text)


STUDY = Study("budget", "methods as the budget varies (paper 001, Table 2; paper 000, Table 3)", Options, plan, report)
