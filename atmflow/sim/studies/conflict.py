"""Study ``conflict`` (paper 003, Definition 1): the knowledge conflict matrix C_{j|i} of TA and TATR.

``C_{j|i} = L_j(theta_MTL({theta_k}_{k=1..K})) - L_j(theta_MTL({theta_k}_{k != i}))``: how much task j's
test loss changes when task i's vector joins the merge. For TA, ``theta_MTL(S) = theta_pre + lambda *
sum_{k in S} Delta_k`` (Eq. 3); for TATR the same sum through the trust-region mask of the tasks in S
(Eq. 8-10), i.e. the merge without task i is TATR run on the other tasks. Lambda is the method's,
chosen on validation (or ``merge-lambda`` with an empty ``lambda-grid``).

The probe is a one-shot strategy (same fine-tuning instructions, hence the same cached task vectors
as the one-shot runs) that, after choosing lambda, merges every leave-one-out subset and has every
task node evaluate each merged model on its test split, through the usual evaluation exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from pydantic import field_validator

from atmflow.analysis import knowledge_conflict, total_conflict
from atmflow.server.exchange import evaluate_on_tasks
from atmflow.sim.studies import figures
from atmflow.sim.studies.methods import ONESHOT, check_methods
from atmflow.sim.studies.runner import Pick, Row, RunSpec
from atmflow.sim.studies.study import RunOutput, Study, StudyOptions, str_list
from atmflow.sim.studies.tables import Table, compare, markdown
from atmflow.strategies import OneShot
from atmflow.strategies.base import RoundInputs, StateDict

KIND = "conflict"
ALL = "(all tasks)"


class ConflictProbe(OneShot):
    """One-shot merging that also scores every leave-one-out merge (noted as ``conflict_scores``); the
    merge of all tasks is scored by the strategy's own test evaluation."""

    def merge(self, base: StateDict, inputs: RoundInputs) -> StateDict:
        merged = super().merge(base, inputs)
        lam = self._extra.get("lambda")
        tasks = sorted(inputs.vectors)
        out = {}
        for left_out in tasks:
            keep = [t for t in tasks if t != left_out]
            model = self.merge_step.apply(base, {t: inputs.vectors[t] for t in keep},
                                          {t: inputs.num_examples[t] for t in keep},
                                          {t: inputs.grads[t] for t in keep if t in inputs.grads} or None,
                                          scale=lam, round_=inputs.round)
            out[left_out] = evaluate_on_tasks(self._grid, self.node_tasks, ArrayRecord(model), "test",
                                              self.round_timeout, f"conflict: merge without {left_out}", "fail")
        self.note("conflict_scores", out)
        return merged


def run_probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Fine-tune (or reuse the cache), choose lambda, and measure C_{j|i} on the test splits."""
    from atmflow.client.app import app as client_app
    from atmflow.config import load_config
    from atmflow.models.family import get_family
    from atmflow.server.experiment import train_instructions
    from atmflow.server.nodes import discover_task_nodes
    from atmflow.sim.inprocess import InProcessGrid
    from atmflow.strategies import MergeStep
    from atmflow.strategies.merge_step import operator_params

    cfg = load_config(overrides)
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    family = get_family(cfg)
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = encoder.state_dict()
    step = MergeStep(cfg.merge_method, operator_params(cfg), cfg.aggregation)
    how = train_instructions(cfg, epochs=cfg.budget_epochs, evaluate_finetuned=cfg.individual,
                             tatr_exemplars=cfg.tatr_exemplars if step.needs_gradients else 0)
    probe = ConflictProbe(node_tasks, how, step, expected={k: pretrained[k] for k in family.trainable_keys(encoder)},
                          round_timeout=cfg.round_timeout, policy="fail", lambda_grid=cfg.lambda_grid)
    probe.start(grid, initial_arrays=ArrayRecord(pretrained), num_rounds=1, timeout=cfg.round_timeout)
    (record,) = probe.history
    scores = {ALL: record.tasks, **record.extra.pop("conflict_scores")}
    without = {i: s for i, s in scores.items() if i != ALL}
    lam = record.extra.get("lambda", cfg.merge_lambda or None)  # None: the operator's default
    result: dict[str, Any] = {"kind": KIND, "config": cfg.to_run_config(), "lambda": lam, "scores": scores,
                              "round": asdict(record)}
    for metric in ("loss", "accuracy"):
        matrix = knowledge_conflict({j: s[metric] for j, s in scores[ALL].items()},
                                    {i: {j: s[metric] for j, s in row.items()} for i, row in without.items()})
        result[f"conflict-{metric}"] = {"matrix": matrix, "total": total_conflict(matrix)}
    return result


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
