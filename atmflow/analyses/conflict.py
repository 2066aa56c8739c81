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

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from atmflow.rounds.exchange import GridEvaluator
from atmflow.strategies import OneShot, RunPlan
from atmflow.strategies.base import RoundInputs, StateDict

KIND = "conflict"
ALL = "(all tasks)"


def knowledge_conflict(with_all: Mapping[str, float],
                       without: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Knowledge conflict (paper 003, Definition 1): ``C_{j|i} = L_j(theta_MTL({theta_k}_k))
    - L_j(theta_MTL({theta_k}_{k != i}))``, the change of task j's loss when task i joins the merge.

    ``with_all[j]`` is task j's loss on the model merged from every task; ``without[i][j]`` its loss
    on the model merged from every task but i. Returns ``{j: {i: C_{j|i}}}`` for ``i != j``; a
    positive value is a conflict (adding task i hurts task j). The same formula on accuracies gives
    the accuracy change (negative = harm).
    """
    return {j: {i: with_all[j] - without[i][j] for i in sorted(without) if i != j} for j in sorted(with_all)}


def total_conflict(conflict: Mapping[str, Mapping[str, float]]) -> float:
    """``C = sum_{i != j} C_{j|i}`` (paper 003, Section 4)."""
    return sum(value for row in conflict.values() for value in row.values())


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
            out[left_out] = self.evaluator(model, "test", f"conflict: merge without {left_out}")
        self.note("conflict_scores", out)
        return merged


def run_probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Fine-tune (or reuse the cache), choose lambda, and measure C_{j|i} on the test splits."""
    from atmflow.client.app import app as client_app
    from atmflow.config import load_config
    from atmflow.models.family import get_family
    from atmflow.server.nodes import discover_task_nodes
    from atmflow.sim.inprocess import InProcessGrid

    cfg = load_config(overrides)
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    family = get_family(cfg)
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = encoder.state_dict()
    plan = dataclasses.replace(RunPlan.from_config(cfg, oneshot=True), policy="fail")
    probe = ConflictProbe(node_tasks, plan, {k: pretrained[k] for k in family.trainable_keys(encoder)},
                          evaluator=GridEvaluator(grid, node_tasks, cfg.round_timeout, "fail"))
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
