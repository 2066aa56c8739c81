"""Study ``original-settings`` (paper 001, Table 1): every method at the papers' budget of 10 epochs.

Rows: pretrained, the one-shot methods (one shared fine-tuning of ``budget`` epochs per task, lambda
on validation), PH-ATM10 (TA-merged start, 10 rounds x 1 epoch on validation), PA-ATM10 and
PA-ATM30 (round 10 and round 30 of one PA-ATM run), individual (each task's own model, fine-tuned for
``budget`` epochs) and individual (30 epochs). Each row's normalized accuracy divides by the individual
models of its own budget (:func:`atmflow.studies.runner.normalized_rows`): PA-ATM30 by the 30-epoch ones,
which the PA-ATM run fine-tunes (its ``budget-epochs`` is its 30 rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from atmflow.studies import figures
from atmflow.studies.methods import ONESHOT, check_methods, oneshot, pa_atm, ph_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions, round_curves, str_list
from atmflow.studies.tables import Table, compare, method_table


class Options(StudyOptions):
    budget: int = 10  # epochs per task: one-shot fine-tuning, PH-ATM and PA-ATM rounds
    long_rounds: int = 30  # the longer PA-ATM row (PA-ATM30)
    methods: tuple[str, ...] = tuple(ONESHOT)

    _methods = field_validator("methods", mode="before")(lambda v: check_methods(str_list(v)))


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    setting = f"{opts.budget} epochs"
    specs: list[RunSpec] = []
    for seed in seeds:  # the first one-shot run fills the cache that the others (and PH-ATM's start) reuse
        specs += [oneshot(m, opts.budget, seed, base, setting, with_bounds=i == 0) for i, m in enumerate(opts.methods)]
        specs.append(ph_atm(opts.budget, seed, base, [Pick(f"PH-ATM{opts.budget}", setting, opts.budget)]))
        picks = [Pick(f"PA-ATM{r}", setting, r) for r in sorted({opts.budget, opts.long_rounds})]
        if opts.long_rounds > opts.budget:  # the run's own individual models: fine-tuned for its 30 epochs
            picks.append(Pick(long_individual(opts), setting, INDIVIDUAL))
        specs.append(pa_atm(max(opts.long_rounds, opts.budget), 1, seed, base, picks))
    return specs


def long_individual(opts: Options) -> str:
    """The row of the individual models fine-tuned for the longer PA-ATM run's budget."""
    return f"{INDIVIDUAL} ({opts.long_rounds} epochs)"


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    setting = f"{opts.budget} epochs"
    rows = list(dict.fromkeys([PRETRAINED, *opts.methods, f"PH-ATM{opts.budget}", f"PA-ATM{opts.budget}",
                               f"PA-ATM{opts.long_rounds}", INDIVIDUAL, long_individual(opts)]))
    text = [f"## Accuracy under the original settings (budget {opts.budget} epochs per task)", "",
            "Layout of paper 001, Table 1 (test accuracy per task, then the average); extra columns: normalized "
            "accuracy (merged / individual, per task, against the individual models fine-tuned for as many "
            "epochs as the row spent), MB uploaded per task, mean |cosine| between the task vectors merged.", "",
            method_table(table, setting, rows, [("normalized", "normalized"), ("mb-up-per-task", "MB up per task"),
                                                ("mean-abs-cosine", "mean abs cos")]), ""]
    lams = [f"{m}: " + ", ".join(f"{v:g}" for v in table.values(setting, m, "avg", "lambda")) for m in opts.methods]
    text += [f"Lambda chosen on validation, per seed: {'; '.join(lams)}.", ""]
    oneshots = [m for m in opts.methods if table.has(setting, m)]
    best = max(oneshots, key=lambda m: table.mean(setting, m))
    pa, ph = f"PA-ATM{opts.budget}", f"PH-ATM{opts.budget}"
    claims = [compare(pa, table.values(setting, pa), f"best one-shot ({best})", table.values(setting, best)),
              compare(ph, table.values(setting, ph), f"best one-shot ({best})", table.values(setting, best))]
    if opts.long_rounds != opts.budget:
        claims.append(compare(f"PA-ATM{opts.long_rounds}", table.values(setting, f"PA-ATM{opts.long_rounds}"), pa,
                              table.values(setting, pa)))
    ranked = sorted(oneshots, key=lambda m: -table.mean(setting, m))
    if len(ranked) > 1:  # one one-shot method has no best-against-worst gap
        claims.append(compare(f"best one-shot ({ranked[0]})", table.values(setting, ranked[0]),
                              f"worst one-shot ({ranked[-1]})", table.values(setting, ranked[-1])))
    text += ["Differences of the average accuracy:", "", *(f"- {c}" for c in claims), ""]
    tasks = table.tasks()
    shown = [m for m in (PRETRAINED, "TA", best, ph, pa, f"PA-ATM{opts.long_rounds}", INDIVIDUAL)
             if table.has(setting, m)]
    radar = figures.radar(fig_dir / "radar.png", f"Per-task accuracy, budget {opts.budget} epochs", tasks,
                          {m: {t: table.mean(setting, m, t) for t in tasks} for m in dict.fromkeys(shown)})
    curves = figures.curves(fig_dir / "accuracy_per_round.png", "Average test accuracy per round",
                            "round (epochs per task spent)", "average test accuracy",
                            round_curves(runs, lambda spec: spec.picks[-1].method if spec.picks[0].method.startswith(
                                ("PA-ATM", "PH-ATM")) else None),
                            {f"{m} (one-shot, {opts.budget} epochs)": table.mean(setting, m) for m in ("TA", best)})
    text += [f"![radar]({radar.relative_to(fig_dir.parent)})", "",
             f"![accuracy per round]({curves.relative_to(fig_dir.parent)})"]
    return "\n".join(text)


STUDY = Study("original-settings", "every method under the papers' original settings (paper 001, Table 1)",
              Options, plan, report)
