"""One run, start to finish: config -> task nodes -> strategy -> per-task evaluation -> report.

0. before asking any node for work: the output folder is writable, ``init-checkpoint`` loads, fits
   the model and is finite, and ``resume = true`` finds a checkpoint (else it fails, unless
   ``resume-missing = "start"``);
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

import tempfile
import time
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from atmflow import protocol
from atmflow.config import RunConfig
from atmflow.files import atomic_save_tensors
from atmflow.merging import load_checkpoint as load_weights_file
from atmflow.merging.task_vectors import StateDict
from atmflow.models.family import get_family
from atmflow.rounds.exchange import GridEvaluator, require_finite, send_to_tasks
from atmflow.rounds.records import RoundRecord, Scores, avg_accuracy
from atmflow.server.checkpoint import load_checkpoint, save_checkpoint, writing
from atmflow.server.node_keys import load_node_keys
from atmflow.server.nodes import discover_and_evaluate, discover_task_nodes
from atmflow.server.provenance import provenance
from atmflow.server.results import RunResults
from atmflow.strategies import RunPlan, build_strategy
from atmflow.strategies.plan import individual_instructions, required_train_metrics
from atmflow.threads import pin_threads


def finetuned_scores(train_metrics: dict[str, dict[str, float]]) -> Scores:
    """The fine-tuned models' test scores the train replies carry (``finetuned-accuracy``, ``finetuned-loss``
    and, where sent, ``finetuned-<official metric>``), as ``{task: {accuracy, loss[, official metric]}}``;
    under ``privacy = "dp"`` also the epsilon the client had spent once it had fine-tuned that model."""
    def scores(m: dict[str, float]) -> dict[str, float]:
        official = {k: m[protocol.FINETUNED + k] for k in protocol.OFFICIAL_METRICS if protocol.FINETUNED + k in m}
        spent = {protocol.DP_EPSILON: m[protocol.DP_EPSILON]} if protocol.DP_EPSILON in m else {}
        return {"accuracy": m[protocol.FINETUNED_ACCURACY], "loss": m[protocol.FINETUNED_LOSS], **official, **spent}

    return {t: scores(m) for t, m in sorted(train_metrics.items())}


def has_finetuned_scores(train_metrics: dict[str, dict[str, float]]) -> bool:
    """Whether train replies carry the fine-tuned models' test scores (a one-shot round from the pretrained model)."""
    return protocol.FINETUNED_ACCURACY in next(iter(train_metrics.values()), {})


def individual_scores(grid: Grid, cfg: RunConfig, node_tasks: dict[int, str], pretrained: ArrayRecord) -> Scores:
    """Each task fine-tunes the pretrained encoder for the whole budget and tests its own model."""
    instructions = individual_instructions(cfg)
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.train_request(pretrained, instructions),
                            cfg.round_timeout, "individual fine-tuning",
                            required=required_train_metrics(cfg, True)).enforce(cfg.on_missing_task)
    return finetuned_scores({t: dict(r.content.metric_records[protocol.METRICS]) for t, r in replies.valid.items()})


def load_start_checkpoint(path: str, pretrained: StateDict, expected: StateDict) -> StateDict:
    """PH-ATM's start from a file: it loads, the fine-tuned tensors are all there with the right shapes, and
    every value is finite (checked before the handshake)."""
    if not Path(path).is_file():
        raise ValueError(f"init-checkpoint {path} does not exist; give the path of a merged encoder "
                         "(e.g. <output-dir>/<run-name>/final_encoder.safetensors)")
    try:
        weights = load_weights_file(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message, naming the key
        raise ValueError(f"init-checkpoint {path} does not load as a checkpoint ({err})") from None
    missing = [k for k in expected if k not in weights]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or wrong:
        raise ValueError(f"init-checkpoint {path} does not fit the model: "
                         f"missing {missing[:3]}, wrong shape {wrong[:3]}")
    start = {**pretrained, **{k: weights[k].to(expected[k].dtype) for k in expected}}
    require_finite(start, f"init-checkpoint {path}")
    return start


def check_output_folder(out: Path) -> None:
    """The run folder exists or can be made, and a file can be written in it (before any node works).

    Leaves nothing behind: the probe is a temporary folder in the nearest folder that exists, so a run
    that fails later (e.g. at the handshake) has created no output folder."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryDirectory(dir=existing):
            pass
    except OSError as err:
        raise RuntimeError(f"cannot write results to {out} ({err}); choose another output-dir or run-name, "
                           "or fix the folder's permissions") from None


def check_resumable(out: Path, cfg: RunConfig, saved: object) -> None:
    """``resume = true`` with no checkpoint in the run folder fails unless ``resume-missing = "start"``."""
    if cfg.resume and saved is None and cfg.resume_missing == "fail":
        raise RuntimeError(f"resume = true, but {out} holds no checkpoint.json to resume from; check output-dir "
                           "and run-name, or set resume-missing = \"start\" to start a fresh run there")


def ph_atm_start(grid: Grid, cfg: RunConfig, node_tasks: dict[int, str], pretrained: StateDict,
                 start_file: StateDict | None, expected: StateDict) -> tuple[StateDict, RoundRecord]:
    """PH-ATM's starting model: the merged checkpoint file (``start_file``, loaded and checked before the
    handshake), or one-shot TA built here (paper 001, Sec. 3)."""
    evaluator = GridEvaluator(grid, node_tasks, cfg.round_timeout, cfg.on_missing_task)
    if start_file is not None:
        start = start_file
        scores = evaluator(start, "test", "start model evaluation")
        return start, RoundRecord(0, scores, avg_accuracy(scores), 0.0, 0, {}, {},
                                  extra={"merge": "checkpoint", "path": cfg.init_checkpoint})
    ta = build_strategy(RunPlan.ta_start(cfg), node_tasks, expected, evaluator=evaluator, first_round=0)
    result = ta.start(grid, initial_arrays=ArrayRecord(pretrained), num_rounds=1, timeout=cfg.round_timeout)
    return result.arrays.to_torch_state_dict(), ta.history[0]


def run_experiment(grid: Grid, cfg: RunConfig) -> RunResults:
    started = time.perf_counter()
    pin_threads(cfg.num_threads)  # merging and the server's own evaluation sum in the same order on every path
    out = Path(cfg.output_dir) / cfg.run_name
    config = cfg.to_run_config()
    family = get_family(cfg)
    family.check_available()  # missing pretrained weights fail here, before any client is asked to work
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = encoder.state_dict()
    expected = {k: pretrained[k] for k in family.trainable_keys(encoder)}

    check_output_folder(out)
    saved = load_checkpoint(out, config) if cfg.resume else None
    check_resumable(out, cfg, saved)
    start_file = (load_start_checkpoint(cfg.init_checkpoint, pretrained, expected)
                  if cfg.init_checkpoint and saved is None else None)
    bound = load_node_keys(cfg.node_keys_file, cfg.tasks) if cfg.node_keys_file else None
    if saved is not None:
        node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout, bound,
                                         cfg.on_missing_task)
        state, start = saved
        require_finite(start, f"the checkpoint of round {state['round']} in {out}")  # a file is not trusted
        results = RunResults.from_json(state["results"])
        log(INFO, "resuming %s after round %d", out, state["round"])
    else:  # the handshake also evaluates the pretrained encoder (one exchange instead of two)
        node_tasks, base_scores = discover_and_evaluate(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout,
                                                        ArrayRecord(pretrained), "test", "pretrained evaluation",
                                                        cfg.on_missing_task, bound)
        log(INFO, "round 0 (pretrained): average test accuracy %.3f", avg_accuracy(base_scores))
        results = RunResults(cfg.strategy, cfg.label, config, base_scores, [])
        results.provenance = provenance(cfg, family.weights_file())
        start = pretrained
        if cfg.ph_atm:
            start, results.init = ph_atm_start(grid, cfg, node_tasks, pretrained, start_file,
                                                 expected)
            if cfg.individual and has_finetuned_scores(results.init.train):
                results.individual = finetuned_scores(results.init.train)

    def on_round_end(record: RoundRecord, merged: ArrayRecord) -> None:
        results.rounds.append(record)
        results.wall_s = time.perf_counter() - started
        state = {"config": config, "results": results.to_json()}
        save_checkpoint(out, record.round, merged.to_torch_state_dict(), state)  # checked finite when merged

    done = len(results.rounds)
    final = start
    if done < cfg.num_rounds:
        evaluator = GridEvaluator(grid, node_tasks, cfg.round_timeout, cfg.on_missing_task)
        strategy = build_strategy(RunPlan.from_config(cfg), node_tasks, expected, evaluator=evaluator,
                                  first_round=done + 1, on_round_end=on_round_end)
        result = strategy.start(grid, initial_arrays=ArrayRecord(start), num_rounds=cfg.num_rounds - done,
                                timeout=cfg.round_timeout)
        final = result.arrays.to_torch_state_dict()

    if cfg.individual and results.individual is None:
        first = results.rounds[0].train
        results.individual = (finetuned_scores(first) if has_finetuned_scores(first)
                              else individual_scores(grid, cfg, node_tasks, ArrayRecord(pretrained)))
        log(INFO, "individual fine-tuning: average test accuracy %.3f", avg_accuracy(results.individual))

    results.wall_s = time.perf_counter() - started
    with writing(out, "the final model and the results"):
        atomic_save_tensors(final, out / "final_encoder.safetensors")  # before the results that point at it
        results.write(out)
    log(INFO, "results written to %s", out.resolve())
    print(results.report(), flush=True)
    return results
