"""Probe ``base-trajectory`` (paper 000, Section 7.3, Fig. 8): the path of the ATM base in parameter space.

One process, one in-process grid: the pretrained encoder; the base after every ATM round of the run's
config (PA-ATM: ``rounds`` x ``epochs-per-round`` from the pretrained model, mean merge, alpha 1); and
the one-shot merges of the paper's figure (TA, TIES, Breadcrumbs; each task fine-tuned for the run's
``budget-epochs``, the same budget, lambda chosen on validation as in a one-shot run). The trainable weights
of these checkpoints are projected on their first two principal components
(:func:`atmflow.analyses.trajectory.pca_2d`, fitted on exactly these points), with each checkpoint's
average test accuracy. With a ``cache-dir`` the one-shot fine-tuning is shared with the studies' one-shot runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from atmflow.analyses.trajectory import flatten, pca_2d
from atmflow.config import RunConfig, load_config
from atmflow.merging.registry import METHODS
from atmflow.rounds.exchange import GridEvaluator
from atmflow.rounds.records import RoundRecord, avg_accuracy
from atmflow.strategies import RunPlan, build_strategy

KIND = "base-trajectory"
BASELINES = ("ta", "ties", "breadcrumbs")  # the one-shot merges of paper 000, Fig. 8


def run_probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoints' 2-D PCA coordinates and accuracies: ``points`` (label, method, round, pc1, pc2,
    accuracy) and ``explained`` (each component's share of the variance)."""
    from atmflow.client.app import app as client_app
    from atmflow.models.family import get_family
    from atmflow.server.nodes import discover_and_evaluate
    from atmflow.sim.inprocess import InProcessGrid

    cfg = load_config(overrides)
    if cfg.strategy != "atm" or cfg.ph_atm:
        raise ValueError(f"the base-trajectory probe follows PA-ATM from the pretrained model; this run has strategy "
                         f"{cfg.strategy!r}{' starting from a merged model' if cfg.ph_atm else ''}")
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    family = get_family(cfg)
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = encoder.state_dict()
    keys = family.trainable_keys(encoder)
    expected = {k: pretrained[k] for k in keys}
    node_tasks, scores = discover_and_evaluate(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout,
                                               ArrayRecord(pretrained), "test", "pretrained evaluation", "fail")
    evaluator = GridEvaluator(grid, node_tasks, cfg.round_timeout, "fail")
    points: list[dict[str, Any]] = [{"label": "pretrained", "method": "pretrained", "round": 0,
                                     "accuracy": avg_accuracy(scores)}]
    vectors = [flatten(pretrained, keys)]

    def follow(run: RunConfig, method: str) -> None:
        def on_round_end(record: RoundRecord, merged: ArrayRecord) -> None:
            label = f"{method} round {record.round}" if method == "ATM" else method
            points.append({"label": label, "method": method, "round": record.round, "accuracy": record.avg_accuracy})
            vectors.append(flatten(merged.to_torch_state_dict(), keys))

        plan = dataclasses.replace(RunPlan.from_config(run), policy="fail")
        strategy = build_strategy(plan, node_tasks, expected, evaluator=evaluator, on_round_end=on_round_end)
        strategy.start(grid, initial_arrays=ArrayRecord(pretrained), num_rounds=run.num_rounds,
                       timeout=run.round_timeout)

    follow(cfg, "ATM")
    for merge in BASELINES:
        follow(load_config({**overrides, "strategy": "oneshot", "merge": merge}), METHODS[merge].display_name())
    coords, explained = pca_2d(vectors)
    for point, (x, y) in zip(points, coords, strict=True):
        point.update(pc1=x, pc2=y)
    return {"kind": KIND, "config": cfg.to_run_config(), "points": points, "explained": list(explained)}
