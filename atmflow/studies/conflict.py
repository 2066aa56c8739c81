"""Study ``conflict``: the knowledge conflict matrix C_{j|i} of TA and TATR (paper 003, Definition 1),
measured by :mod:`atmflow.analyses.conflict` for each method and seed; tables and heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from atmflow.analyses.conflict import ALL, KIND, run_probe
from atmflow.studies import figures
from atmflow.studies.methods import ONESHOT, check_methods
from atmflow.studies.runner import Pick, Row, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions, str_list
from atmflow.studies.tables import Table, compare, markdown


class Options(StudyOptions):
    budget: int = 10  # epochs of fine-tuning behind the task vectors
    methods: tuple[str, ...] = ("TA", "TATR")

    _methods = field_validator("methods", mode="before")(lambda v: check_methods(str_list(v)))


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    return [RunSpec(seed, {**base, "strategy": "oneshot", "budget-epochs": opts.budget, **ONESHOT[m]},
                    (Pick(m, f"{opts.budget} epochs", 1),), kind=KIND) for seed in seeds for m in opts.methods]


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """Per ordered pair ``j|i``: the conflict on the loss and on the accuracy; their totals; lambda;
    the merged model's test accuracy per task."""
    pick = spec.picks[0]
    lam = float(results["lambda"] or 0)
    out = [Row(study, pick.setting, pick.method, spec.seed, "avg", "lambda", lam, folder.name)]
    for metric in ("loss", "accuracy"):
        block = results[f"conflict-{metric}"]
        for j, row in block["matrix"].items():
            out += [Row(study, pick.setting, pick.method, spec.seed, f"{j}|{i}", f"conflict-{metric}", v, folder.name)
                    for i, v in row.items()]
        out.append(Row(study, pick.setting, pick.method, spec.seed, "total", f"conflict-{metric}", block["total"],
                       folder.name))
    merged = results["scores"][ALL]
    for task, s in merged.items():
        out.append(Row(study, pick.setting, pick.method, spec.seed, task, "accuracy", s["accuracy"], folder.name))
    out.append(Row(study, pick.setting, pick.method, spec.seed, "avg", "accuracy",
                   sum(s["accuracy"] for s in merged.values()) / len(merged), folder.name))
    return out


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    setting = f"{opts.budget} epochs"
    tasks = table.tasks()
    text = [f"## Knowledge conflict C_j|i (paper 003, Definition 1), task vectors of {opts.budget} epochs", "",
            "Row j, column i: change of task j's test loss when task i's vector joins the merge "
            "(positive = task i hurts task j); the diagonal is undefined. Each method merges with the lambda in its "
            "heading (chosen on validation, unless merge-lambda is set with an empty lambda-grid); C grows with "
            "lambda: for a comparison at one lambda, run with "
            "`--run-config \"merge-lambda=0.3 lambda-grid=''\"`.", ""]
    matrices = {}
    for m in opts.methods:
        lam = ", ".join(f"{v:g}" for v in table.values(setting, m, "avg", "lambda"))
        text += [f"### {m} (lambda per seed: {lam})", "",
                 markdown(["j \\ i", *tasks], [[j, *("—" if i == j else table.cell(setting, m, f"{j}|{i}",
                                                                                      "conflict-loss")
                                                     for i in tasks)] for j in tasks]), ""]
        matrices[m] = [[float("nan") if i == j else table.mean(setting, m, f"{j}|{i}", "conflict-loss") for i in tasks]
                       for j in tasks]
    body = [[m, table.cell(setting, m, "total", "conflict-loss"), table.cell(setting, m, "total", "conflict-accuracy"),
             table.cell(setting, m)] for m in opts.methods]
    text += ["Totals C = sum over i != j (loss), the same sum on accuracy (negative = accuracy lost), and the "
             "merged model's average test accuracy:", "",
             markdown(["method", "C (loss)", "sum of accuracy changes", "average accuracy"], body), ""]
    if "TA" in opts.methods and "TATR" in opts.methods:
        text.append("- " + compare("C(TATR)", table.values(setting, "TATR", "total", "conflict-loss"), "C(TA)",
                                   table.values(setting, "TA", "total", "conflict-loss")))
    finite = [abs(v) for mat in matrices.values() for row in mat for v in row if v == v]
    bound = max(finite, default=1.0) or 1.0
    heat = figures.heatmaps(fig_dir / "conflict_heatmaps.png", "Knowledge conflict C_j|i on the test loss "
                            "(row j, column i; mean over seeds)", tasks, matrices, vmin=-bound, vmax=bound,
                            cmap="coolwarm", fmt=".3f")
    text += ["", f"![conflict]({heat.relative_to(fig_dir.parent)})"]
    return "\n".join(text)


STUDY = Study("conflict", "knowledge conflict of TA and TATR (paper 003, Definition 1)", Options, plan, report,
              rows=rows, probes={KIND: run_probe})
