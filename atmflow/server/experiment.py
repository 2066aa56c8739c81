"""One run, start to finish: config -> task nodes -> strategy -> per-task evaluation -> report.

1. find which node holds which task (handshake);
2. round 0: every task tests the pretrained encoder on its test split;
3. PH-ATM only: build the starting model (one-shot TA, or a merged checkpoint file);
4. the strategy's rounds (train, merge, test), with a checkpoint after every round; with
   ``resume = true`` a run continues after its last completed round;
5. the individual upper bound: each task's own model fine-tuned from the pretrained one for
   ``budget-epochs`` (one-shot replies already carry it; otherwise one extra train exchange);
6. write ``results.json``, ``report.md``, ``accuracy.png`` and ``final_encoder.safetensors``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol
from atmflow.config import RunConfig
from atmflow.files import atomic_save_tensors
from atmflow.merging import load_checkpoint as load_weights_file
from atmflow.models.family import get_family
from atmflow.server.checkpoint import load_checkpoint, save_checkpoint
from atmflow.server.exchange import evaluate_on_tasks, send_to_tasks
from atmflow.server.nodes import discover_and_evaluate, discover_task_nodes
from atmflow.server.results import RoundRecord, RunResults, Scores, avg_accuracy
from atmflow.strategies import ATM, MergeStep, OneShot, TaskVectorStrategy
from atmflow.strategies.merge_step import operator_params

StateDict = dict[str, torch.Tensor]


def train_instructions(cfg: RunConfig, *, epochs: int, split: str = "train", evaluate_finetuned: bool = False,
                       tatr_exemplars: int = 0) -> protocol.TrainInstructions:
    return protocol.TrainInstructions(
        epochs=epochs, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size, full_batch=cfg.full_batch, seed=cfg.seed,
        evaluate_finetuned=evaluate_finetuned, split=split, tatr_exemplars=tatr_exemplars,
    )


def build_strategy(cfg: RunConfig, node_tasks: dict[int, str], expected: StateDict, *, method: str | None = None,
                   oneshot: bool | None = None, first_round: int = 1,
                   on_round_end: Callable[[RoundRecord, ArrayRecord], None] | None = None) -> TaskVectorStrategy:
    """The run's strategy (or, for PH-ATM's start, a one-shot TA: ``method="ta", oneshot=True``)."""
    method = method or cfg.merge_method
    oneshot = cfg.strategy == "oneshot" if oneshot is None else oneshot
    params = operator_params(cfg) if method == cfg.merge_method else {}
    step = MergeStep(method, params, cfg.aggregation)
    exemplars = cfg.tatr_exemplars if step.needs_gradients else 0
    common = dict(expected=expected, round_timeout=cfg.round_timeout, policy=cfg.on_missing_task,
                  first_round=first_round, on_round_end=on_round_end)
    if oneshot:
        how = train_instructions(cfg, epochs=cfg.budget_epochs, evaluate_finetuned=cfg.individual,
                                 tatr_exemplars=exemplars)
        return OneShot(node_tasks, how, step, lambda_grid=cfg.lambda_grid, **common)
    how = train_instructions(cfg, epochs=cfg.epochs_per_round, split="validation" if cfg.ph_atm else "train",
                             tatr_exemplars=exemplars)
    return ATM(node_tasks, how, step, **common)


def finetuned_scores(train_metrics: dict[str, dict[str, float]]) -> Scores:
    return {t: {"accuracy": m["finetuned-accuracy"], "loss": m["finetuned-loss"]}
            for t, m in sorted(train_metrics.items())}


def individual_scores(grid: Grid, cfg: RunConfig, node_tasks: dict[int, str], pretrained: ArrayRecord) -> Scores:
    """Each task fine-tunes the pretrained encoder for the whole budget and tests its own model."""
    how = dataclasses.replace(train_instructions(cfg, epochs=cfg.budget_epochs, evaluate_finetuned=True),
                              seed=cfg.seed * 100_003 + 1)  # the data order of a one-shot round 1
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.content(arrays=pretrained, config=how.to_record()),
                            cfg.round_timeout, "individual fine-tuning").enforce(cfg.on_missing_task)
    return finetuned_scores({t: dict(r.content.metric_records[protocol.METRICS]) for t, r in replies.valid.items()})


def load_start_checkpoint(path: str, pretrained: StateDict, expected: StateDict) -> StateDict:
    """PH-ATM's start from a file: the fine-tuned tensors must all be there with the right shapes."""
    weights = load_weights_file(path)
    missing = [k for k in expected if k not in weights]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or wrong:
        raise ValueError(f"init-checkpoint {path} does not fit the model: "
                         f"missing {missing[:3]}, wrong shape {wrong[:3]}")
    return {**pretrained, **{k: weights[k].to(expected[k].dtype) for k in expected}}


def ph_atm_start(grid: Grid, cfg: RunConfig, node_tasks: dict[int, str], pretrained: StateDict,
                 expected: StateDict) -> tuple[StateDict, RoundRecord]:
    """PH-ATM's starting model: the merged checkpoint file, or one-shot TA built here (paper 001, Sec. 3)."""
    if cfg.init_checkpoint:
        start = load_start_checkpoint(cfg.init_checkpoint, pretrained, expected)
        scores = evaluate_on_tasks(grid, node_tasks, ArrayRecord(start), "test", cfg.round_timeout,
                                   "start model evaluation", cfg.on_missing_task)
        return start, RoundRecord(0, scores, avg_accuracy(scores), 0.0, 0, {}, {},
                                  extra={"merge": "checkpoint", "path": cfg.init_checkpoint})
    ta = build_strategy(cfg, node_tasks, expected, method="ta", oneshot=True, first_round=0)
    result = ta.start(grid, initial_arrays=ArrayRecord(pretrained), num_rounds=1, timeout=cfg.round_timeout)
    return result.arrays.to_torch_state_dict(), ta.history[0]


def run_experiment(grid: Grid, cfg: RunConfig) -> RunResults:
    started = time.perf_counter()
    out = Path(cfg.output_dir) / cfg.run_name
    config = cfg.to_run_config()
    family = get_family(cfg)
    family.check_available()  # missing pretrained weights fail here, before any client is asked to work
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = encoder.state_dict()
    expected = {k: pretrained[k] for k in family.trainable_keys(encoder)}

    saved = load_checkpoint(out, config) if cfg.resume else None
    if saved is not None:
        node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
        state, start = saved
        results = RunResults.from_json(state["results"])
        log(INFO, "resuming %s after round %d", out, state["round"])
    else:  # the handshake also evaluates the pretrained encoder (one exchange instead of two)
        node_tasks, base_scores = discover_and_evaluate(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout,
                                                        ArrayRecord(pretrained), "test", "pretrained evaluation",
                                                        cfg.on_missing_task)
        log(INFO, "round 0 (pretrained): average test accuracy %.3f", avg_accuracy(base_scores))
        results = RunResults(cfg.strategy, cfg.label, config, base_scores, [])
        start = pretrained
        if cfg.ph_atm:
            start, results.init = ph_atm_start(grid, cfg, node_tasks, pretrained, expected)
            if "finetuned-accuracy" in next(iter(results.init.train.values()), {}):
                results.individual = finetuned_scores(results.init.train)

    def on_round_end(record: RoundRecord, merged: ArrayRecord) -> None:
        results.rounds.append(record)
        results.wall_s = time.perf_counter() - started
        state = {"config": config, "results": results.to_json()}
        save_checkpoint(out, record.round, merged.to_torch_state_dict(), state)

    done = len(results.rounds)
    final = start
    if done < cfg.num_rounds:
        strategy = build_strategy(cfg, node_tasks, expected, first_round=done + 1, on_round_end=on_round_end)
        result = strategy.start(grid, initial_arrays=ArrayRecord(start), num_rounds=cfg.num_rounds - done,
                                timeout=cfg.round_timeout)
        final = result.arrays.to_torch_state_dict()

    if cfg.individual and results.individual is None:
        first = results.rounds[0].train
        results.individual = (finetuned_scores(first) if "finetuned-accuracy" in next(iter(first.values()))
                              else individual_scores(grid, cfg, node_tasks, ArrayRecord(pretrained)))
        log(INFO, "individual fine-tuning: average test accuracy %.3f", avg_accuracy(results.individual))

    results.wall_s = time.perf_counter() - started
    results.write(out)
    atomic_save_tensors(final, out / "final_encoder.safetensors")
    log(INFO, "results written to %s", out.resolve())
    print(results.report(), flush=True)
    return results
