"""Study ``orthogonality`` (paper 000, Section 7.1, Fig. 9-10): how orthogonal the task vectors are.

Average absolute pairwise cosine similarity ``mean_{i<j} |cos(tau_i, tau_j)|`` of the task vectors
merged in each PA-ATM iteration, against the one-shot task vectors (each task fine-tuned for the
whole budget from the pretrained model). Computed by :func:`atmflow.rounds.geometry.task_vector_geometry`
on the server, from the task vectors the clients sent.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atmflow.studies import figures
from atmflow.studies.methods import oneshot, pa_atm
from atmflow.studies.runner import Pick, RunSpec
from atmflow.studies.study import RunOutput, Study, StudyOptions
from atmflow.studies.tables import Table, compare, markdown, mean_sd


class Options(StudyOptions):
    rounds: int = 10  # PA-ATM iterations (1 epoch each)
    budget: int = 10  # epochs of the one-shot task vectors


def plan(opts: Options, base: dict[str, Any], seeds: Sequence[int]) -> list[RunSpec]:
    specs: list[RunSpec] = []
    for seed in seeds:
        specs.append(oneshot("TA", opts.budget, seed, base, f"{opts.budget} epochs"))
        specs.append(pa_atm(opts.rounds, 1, seed, base, [Pick("PA-ATM", f"iteration {k}", k)
                                                         for k in range(1, opts.rounds + 1)]))
    return specs


def _cosines(results: dict[str, Any], round_: int) -> tuple[list[str], list[list[float]]]:
    cos = next(r for r in results["rounds"] if r["round"] == round_)["geometry"]["cosine"]
    tasks = sorted(cos)
    return tasks, [[cos[a][b] for b in tasks] for a in tasks]


def report(table: Table, opts: Options, runs: list[RunOutput], fig_dir: Path) -> str:
    one = f"{opts.budget} epochs"
    its = [f"iteration {k}" for k in range(1, opts.rounds + 1)]
    body = [[s, table.cell(s, "PA-ATM", "avg", "mean-abs-cosine", 4), table.cell(s, "PA-ATM")] for s in its]
    body.append([f"one-shot task vectors ({opts.budget} epochs), TA merge", table.cell(one, "TA", "avg",
                                                                                       "mean-abs-cosine", 4),
                 table.cell(one, "TA")])
    last = table.values(its[-1], "PA-ATM", "avg", "mean-abs-cosine")
    shot = table.values(one, "TA", "avg", "mean-abs-cosine")
    firsts = table.values(its[0], "PA-ATM", "avg", "mean-abs-cosine")
    mean_atm = [statistics.fmean(table.values(s, "PA-ATM", "avg", "mean-abs-cosine")[i] for s in its)
                for i in range(len(last))]
    text = ["## Average |cosine| between task vectors", "",
            "Mean over task pairs of |cos(tau_i, tau_j)| of the task vectors merged in each PA-ATM iteration "
            "(1 epoch each), and of the one-shot task vectors; the accuracy column is the merged model's "
            "average test accuracy.", "",
            markdown(["task vectors", "mean abs cos", "average accuracy"], body), "",
            "Differences:", "",
            "- " + compare("PA-ATM, mean over iterations", mean_atm, "one-shot", shot),
            "- " + compare(f"PA-ATM, iteration {opts.rounds}", last, "one-shot", shot),
            "- " + compare(f"PA-ATM, iteration {opts.rounds}", last, "iteration 1", firsts), ""]
    curve = figures.curves(fig_dir / "cosine_per_iteration.png", "Mean |cos| between task vectors (paper 000, Fig. 9)",
                           "PA-ATM iteration", "mean |cosine|",
                           {"PA-ATM task vectors": (list(range(1, opts.rounds + 1)),
                                                    *mean_sd([table.values(s, "PA-ATM", "avg", "mean-abs-cosine")
                                                              for s in its]))},
                           {f"one-shot task vectors ({opts.budget} epochs)": statistics.fmean(shot)}, ylim=None)
    spec, _, results = next((s, f, r) for s, f, r in runs if s.picks[0].method == "PA-ATM")
    shot_results = next(r for s, _, r in runs if s.picks[0].method == "TA" and s.seed == spec.seed)
    tasks, first_m = _cosines(results, 1)
    _, last_m = _cosines(results, opts.rounds)
    _, shot_m = _cosines(shot_results, 1)
    heat = figures.heatmaps(fig_dir / "cosine_heatmaps.png", f"Cosine between task vectors (seed {spec.seed})", tasks,
                            {"one-shot": shot_m, "PA-ATM iteration 1": first_m,
                             f"PA-ATM iteration {opts.rounds}": last_m}, vmin=-1, vmax=1, cmap="coolwarm")
    text += [f"![{p.stem}]({p.relative_to(fig_dir.parent)})\n" for p in (curve, heat)]
    return "\n".join(text)


STUDY = Study("orthogonality", "task-vector orthogonality, ATM against one-shot (paper 000, Fig. 9-10)",
              Options, plan, report)
