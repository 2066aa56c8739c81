"""One run, start to finish: config -> task nodes -> strategy -> per-task evaluation -> report.

1. find which node holds which task (handshake);
2. round 0: every task evaluates the pretrained encoder on its test split;
3. the strategy's rounds (train, merge, evaluate);
4. the individual upper bound: each task's own model fine-tuned from the pretrained one for the
   whole budget (TA's round-1 replies already carry it; otherwise one extra train exchange);
5. write ``results.json``, ``report.md``, ``accuracy.png`` and the final encoder (safetensors).
"""

from __future__ import annotations

import dataclasses
import time
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid
from safetensors.torch import save_file

from atmflow import protocol
from atmflow.config import RunConfig
from atmflow.models.encoder import pretrained_encoder
from atmflow.server.exchange import evaluate_on_tasks, send_to_tasks
from atmflow.server.nodes import discover_task_nodes
from atmflow.server.results import RunResults, Scores, avg_accuracy
from atmflow.strategies import PAATM, TaskArithmetic, TaskVectorStrategy


def train_instructions(cfg: RunConfig, epochs: int, evaluate_finetuned: bool = False) -> protocol.TrainInstructions:
    return protocol.TrainInstructions(
        epochs=epochs, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size, full_batch=cfg.full_batch, seed=cfg.seed, evaluate_finetuned=evaluate_finetuned,
    )


def build_strategy(cfg: RunConfig, node_tasks: dict[int, str]) -> TaskVectorStrategy:
    if cfg.strategy == "ta":
        how = train_instructions(cfg, cfg.budget_epochs, evaluate_finetuned=cfg.individual)
        return TaskArithmetic(node_tasks, how, cfg.round_timeout, lam=cfg.ta_lambda, lambda_grid=cfg.ta_lambda_grid)
    how = train_instructions(cfg, cfg.epochs_per_round)
    return PAATM(node_tasks, how, cfg.round_timeout, alpha=cfg.atm_alpha)


def finetuned_scores(train_metrics: dict[str, dict[str, float]]) -> Scores:
    return {t: {"accuracy": m["finetuned-accuracy"], "loss": m["finetuned-loss"]}
            for t, m in sorted(train_metrics.items())}


def individual_scores(grid: Grid, cfg: RunConfig, node_tasks: dict[int, str], pretrained: ArrayRecord) -> Scores:
    """Each task fine-tunes the pretrained encoder for the whole budget and tests its own model."""
    how = dataclasses.replace(train_instructions(cfg, cfg.budget_epochs, evaluate_finetuned=True),
                              seed=cfg.seed * 100_003 + 1)  # the same data order as TA's round 1
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.content(arrays=pretrained, config=how.to_record()),
                            cfg.round_timeout, "individual fine-tuning")
    return finetuned_scores({t: dict(r.content.metric_records[protocol.METRICS]) for t, r in replies.items()})


def run_experiment(grid: Grid, cfg: RunConfig) -> RunResults:
    started = time.perf_counter()
    out = Path(cfg.output_dir) / cfg.run_name
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    pretrained = ArrayRecord(pretrained_encoder().to(cfg.dtype).state_dict())

    base_scores = evaluate_on_tasks(grid, node_tasks, pretrained, "test", cfg.round_timeout, "pretrained evaluation")
    log(INFO, "round 0 (pretrained): average test accuracy %.3f", avg_accuracy(base_scores))

    strategy = build_strategy(cfg, node_tasks)
    result = strategy.start(grid, initial_arrays=pretrained, num_rounds=cfg.rounds, timeout=cfg.round_timeout)

    individual: Scores | None = None
    if cfg.individual:
        individual = (finetuned_scores(strategy.history[0].train) if cfg.strategy == "ta"
                      else individual_scores(grid, cfg, node_tasks, pretrained))
        log(INFO, "individual fine-tuning: average test accuracy %.3f", avg_accuracy(individual))

    results = RunResults(cfg.strategy, cfg.to_run_config(), dict(sorted(base_scores.items())), strategy.history,
                         individual, time.perf_counter() - started)
    results.write(out)
    save_file({k: v.contiguous() for k, v in result.arrays.to_torch_state_dict().items()},
              str(out / "final_encoder.safetensors"))
    log(INFO, "results written to %s", out.resolve())
    print(results.report(), flush=True)
    return results
