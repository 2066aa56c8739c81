"""Study ``epoch-gradients`` (paper 000, Section 3, Fig. 3 and 11): how much of each task's fine-tuning
trajectory the first epoch makes, and how aligned the epochs' gradients are.

Measured by :mod:`atmflow.analyses.epoch_gradients` per task and seed: the normalized gradient norms
``||g_k|| / sum_k' ||g_k'||`` of a ``norm-epochs`` fine-tuning (Fig. 3a: 5 epochs) and the pairwise cosines of
the epoch gradients of a ``cosine-epochs`` fine-tuning (Fig. 3b and 11: 10 epochs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atmflow.analyses.epoch_gradients import KIND, run_probe
from atmflow.studies import figures
from atmflow.studies.runner import Pick, Row, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions
from atmflow.studies.tables import Table, markdown, mean_sd

METHOD = "fine-tuning"


class Options(StudyOptions):
    norm_epochs: int = 5  # epochs of the fine-tuning whose normalized gradient norms are shown (Fig. 3a)
    cosine_epochs: int = 10  # epochs of the fine-tuning whose gradient cosines are shown (Fig. 3b, 11)


def _setting(epochs: int) -> str:
    return f"{epochs} epochs"


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    return [RunSpec(seed, {**base, "strategy": "oneshot", "budget-epochs": k}, (Pick(METHOD, _setting(k), 1),),
                    kind=KIND) for seed in seeds for k in sorted({opts.norm_epochs, opts.cosine_epochs})]


def rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """Per task and epoch k: ``norm k``, ``normalized-norm k``; per pair of epochs: ``cosine i-j``."""
    setting = spec.picks[0].setting
    out = []
    for task, block in results["tasks"].items():
        def add(metric: str, value: float, task: str = task) -> None:
            out.append(Row(study, setting, METHOD, spec.seed, task, metric, float(value), folder.name))

        for k, (norm, share) in enumerate(zip(block["norm"], block["normalized-norm"], strict=True), start=1):
            add(f"norm {k}", norm)
            add(f"normalized-norm {k}", share)
        for i, row in enumerate(block["cosine"], start=1):
            for j, value in enumerate(row, start=1):
                add(f"cosine {i}-{j}", value)
    return out


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    tasks = sorted({task for _, _, results in runs for task in results["tasks"]})
    kn, kc = opts.norm_epochs, opts.cosine_epochs
    norm_s, cos_s = _setting(kn), _setting(kc)
    epochs = list(range(1, kn + 1))
    text = [f"## Normalized gradient norm per epoch (paper 000, Fig. 3a), {kn}-epoch fine-tuning", "",
            "nabla_k = ||g_k|| / sum_k' ||g_k'|| with g_k = -(theta^(k) - theta^(k-1)) the epoch's gradient "
            "(paper 000, Theorem 3.1); a row sums to 1, and 1/K would mean every epoch moves the weights as much.", "",
            markdown(["task", *(f"epoch {k}" for k in epochs)],
                     [[t, *(table.cell(norm_s, METHOD, t, f"normalized-norm {k}") for k in epochs)] for t in tasks]),
            ""]
    norms = figures.curves(fig_dir / "normalized_norms.png", f"Normalized gradient norm per epoch, {kn} epochs "
                           "(paper 000, Fig. 3a)", "epoch", "||g_k|| / sum ||g_k'||",
                           {t: (epochs, *mean_sd([table.values(norm_s, METHOD, t, f"normalized-norm {k}")
                                                  for k in epochs])) for t in tasks}, {"1/K": 1 / kn})
    later = list(range(1, kc + 1))
    text += [f"## Cosine between epoch gradients (paper 000, Fig. 3b and 11), {kc}-epoch fine-tuning", "",
             "Cosine of each epoch's gradient with the first epoch's (the full matrices are in the figure):", "",
             markdown(["task", *(f"epoch {k}" for k in later)],
                      [[t, *(table.cell(cos_s, METHOD, t, f"cosine 1-{k}") for k in later)] for t in tasks]), ""]
    matrices = {t: [[table.mean(cos_s, METHOD, t, f"cosine {i}-{j}") for j in later] for i in later] for t in tasks}
    heat = figures.heatmaps(fig_dir / "cosine_heatmaps.png", f"Cosine between the gradients of epochs 1-{kc} "
                            "(mean over seeds; paper 000, Fig. 3b, 11)", [f"e{k}" for k in later], matrices,
                            vmin=-1, vmax=1, cmap="coolwarm")
    text += [f"![{p.stem}]({p.relative_to(fig_dir.parent)})\n" for p in (norms, heat)]
    return "\n".join(text)


STUDY = Study("epoch-gradients", "per-epoch gradient norms and cosines of fine-tuning (paper 000, Fig. 3, 11)",
              Options, plan, report, rows=rows, probes={KIND: run_probe})
