"""Study ``budget-distribution`` (paper 001, Table 3; paper 000, Fig. 5): one budget, split differently.

A fixed budget of epochs per task (10 in the papers) spent by PA-ATM as iterations x epochs per
iteration: 1x10 (one merge of 10-epoch task vectors, mean with alpha 1: one-shot merging), 2x5, 5x2,
10x1. The papers find more, shorter iterations better.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from atmflow.studies import figures
from atmflow.studies.methods import bounds, pa_atm
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions, round_curves, str_list
from atmflow.studies.tables import Table, compare, markdown, mean_sd


def _split(value: Any) -> tuple[tuple[int, int], ...]:
    """``"1x10,2x5"`` -> ``((1, 10), (2, 5))`` (iterations x epochs per iteration)."""
    if isinstance(value, str):
        value = str_list(value)
    pairs = []
    for item in value:
        if isinstance(item, str):
            iterations, _, epochs = item.partition("x")
            item = (int(iterations), int(epochs))
        pairs.append((int(item[0]), int(item[1])))
    return tuple(pairs)


class Options(StudyOptions):
    distributions: tuple[tuple[int, int], ...] = ((1, 10), (2, 5), (5, 2), (10, 1))

    _split = field_validator("distributions", mode="before")(_split)

    @model_validator(mode="after")
    def _one_budget(self) -> Options:
        budgets = {i * e for i, e in self.distributions}
        if len(budgets) != 1 or any(i < 1 or e < 1 for i, e in self.distributions):
            raise ValueError(f"every distribution must spend the same budget (iterations x epochs >= 1); "
                             f"got {[f'{i}x{e}' for i, e in self.distributions]}")
        return self

    @property
    def budget(self) -> int:
        return self.distributions[0][0] * self.distributions[0][1]


def setting(iterations: int, epochs: int) -> str:
    return f"{iterations}x{epochs}"


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    # the single-iteration run first: its fine-tuning is the others' individual upper bound (cache)
    order = sorted(opts.distributions)
    specs: list[RunSpec] = []
    for seed in seeds:
        for n, (i, e) in enumerate(order):
            picks = [Pick("PA-ATM", setting(i, e), i), *(bounds(setting(i, e)) if n == 0 else ())]
            specs.append(pa_atm(i, e, seed, base, picks, budget=opts.budget))
    return specs


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    tasks = table.tasks()
    order = sorted(opts.distributions)
    bound = setting(*order[0])
    body = [[str(i), str(e), *(table.cell(setting(i, e), "PA-ATM", t) for t in tasks),
             f"**{table.cell(setting(i, e), 'PA-ATM')}**"] for i, e in order]
    body += [[name, "", *(table.cell(bound, name, t) for t in tasks), f"**{table.cell(bound, name)}**"]
             for name in (PRETRAINED, INDIVIDUAL)]
    first, last = order[0], order[-1]
    text = [f"## PA-ATM, a budget of {opts.budget} epochs per task split differently", "",
            "Layout of paper 001, Table 3 (test accuracy per task, then the average).", "",
            markdown(["iterations", "epochs/iteration", *tasks, "average"], body), "",
            "Differences of the average accuracy between neighbouring splits:", ""]
    for a, b in zip(order[1:], order[:-1], strict=True):
        text.append("- " + compare(setting(*a), table.values(setting(*a), "PA-ATM"), setting(*b),
                                   table.values(setting(*b), "PA-ATM")))
    if len(order) > 2:
        text.append("- " + compare(setting(*last), table.values(setting(*last), "PA-ATM"), setting(*first),
                                   table.values(setting(*first), "PA-ATM")))
    xs = [i for i, _ in order]
    bar = figures.curves(fig_dir / "accuracy_per_distribution.png",
                         f"Average accuracy, {opts.budget} epochs per task (paper 000, Fig. 5)",
                         "iterations (epochs per iteration = budget / iterations)", "average test accuracy",
                         {"PA-ATM": (xs, *mean_sd([table.values(setting(i, e), "PA-ATM") for i, e in order]))},
                         {"individual (avg)": table.mean(bound, INDIVIDUAL)})
    curves = figures.curves(fig_dir / "accuracy_per_round.png", "Average accuracy after each iteration",
                            "epochs per task spent", "average test accuracy",
                            round_curves(runs, lambda spec: spec.picks[0].setting, x_in_epochs=True))
    radar = figures.radar(fig_dir / "radar.png", "Per-task accuracy per budget split", tasks,
                          {setting(i, e): {t: table.mean(setting(i, e), "PA-ATM", t) for t in tasks} for i, e in order})
    text += ["", *(f"![{p.stem}]({p.relative_to(fig_dir.parent)})\n" for p in (bar, curves, radar))]
    return "\n".join(text)


STUDY = Study("budget-distribution", "one budget split into iterations x epochs (paper 001, Table 3; "
              "paper 000, Fig. 5)", Options, plan, report)
