"""Study ``base-trajectory`` (paper 000, Section 7.3, Fig. 8): the ATM base round by round against the
one-shot merges, projected on two principal components.

Measured by :mod:`atmflow.analyses.base_trajectory` per seed: PA-ATM for ``rounds`` rounds of 1 epoch, and
TA, TIES and Breadcrumbs with the same budget (``rounds`` epochs per task); the PCA is fitted per seed on
that seed's checkpoints (pretrained, every ATM base, the three one-shot merges), so coordinates of different
seeds are in different bases: the figure shows the first seed, the table every checkpoint's accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atmflow.analyses.base_trajectory import KIND, run_probe
from atmflow.studies import figures
from atmflow.studies.runner import Pick, Row, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions
from atmflow.studies.tables import Table, markdown

SETTING = "trajectory"


class Options(StudyOptions):
    rounds: int = 10  # PA-ATM rounds of 1 epoch; the one-shot merges fine-tune for as many epochs


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    return [RunSpec(seed, {**base, "strategy": "pa-atm", "rounds": opts.rounds, "epochs-per-round": 1,
                           "budget-epochs": opts.rounds}, (Pick("ATM", SETTING, opts.rounds),), kind=KIND)
            for seed in seeds]


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """Per checkpoint (task column = its label): ``accuracy``, ``pc1``, ``pc2``; per run: ``explained pc1/2``."""
    out = [Row(study, SETTING, p["method"], spec.seed, p["label"], metric, float(p[metric]), folder.name)
           for p in results["points"] for metric in ("accuracy", "pc1", "pc2")]
    out += [Row(study, SETTING, "PCA", spec.seed, "avg", f"explained pc{c}", float(v), folder.name)
            for c, v in enumerate(results["explained"], start=1)]
    return out


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    spec, _, results = min(runs, key=lambda run: run[0].seed)
    points = results["points"]
    share = results["explained"]
    text = ["## The base across ATM rounds and the one-shot merges, 2-D PCA (paper 000, Fig. 8)", "",
            f"PCA fitted on the trainable weights of the checkpoints below (per seed). Coordinates: seed {spec.seed} "
            f"(PC1 {share[0]:.0%}, PC2 {share[1]:.0%} of the variance); average test accuracy: mean ± sd over seeds. "
            f"The one-shot merges fine-tune each task for {opts.rounds} epochs, as much as ATM's {opts.rounds} rounds.",
            "", markdown(["checkpoint", "PC1", "PC2", "average accuracy"],
                         [[p["label"], f"{p['pc1']:.4g}", f"{p['pc2']:.4g}",
                           table.cell(SETTING, p["method"], p["label"])] for p in points]), ""]
    start = points[0]
    series = {}
    for method in dict.fromkeys(p["method"] for p in points[1:]):
        path = [start, *(p for p in points if p["method"] == method)]
        series["ATM base per round" if method == "ATM" else f"pretrained -> {method}"] = (
            [p["pc1"] for p in path], [p["pc2"] for p in path], [0.0] * len(path))
    fig = figures.curves(fig_dir / "pca_trajectory.png", f"Checkpoints on 2 principal components (seed {spec.seed}; "
                         "paper 000, Fig. 8)", f"PC1 ({share[0]:.0%})", f"PC2 ({share[1]:.0%})", series, ylim=None)
    text.append(f"![{fig.stem}]({fig.relative_to(fig_dir.parent)})")
    return "\n".join(text)


STUDY = Study("base-trajectory", "the ATM base across rounds against one-shot merges, PCA (paper 000, Fig. 8)",
              Options, plan, report, rows=rows, probes={KIND: run_probe})
