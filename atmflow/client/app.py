"""The Flower ClientApp: one SuperNode = one task (a simulated one may serve several).

Which task a node holds: ``--node-config "task='mnist'"`` in a deployment; in a simulation, the
node's ``partition-id`` indexes the run config's ``tasks`` list, or, when the simulation has more
or fewer nodes than tasks, each request names the task to answer for (:mod:`atmflow.server.routing`).
In a deployment each SuperNode names its own data with
``--node-config "task='<name>' dataset-path='<folder or hub name>'"`` (own tasks, the Hugging Face
vision tasks, GLUE, fashion-mnist, fortune-topic: every task whose data can be located); it overrides
the run config's location for that task (``data-path`` is its old name). The path stays on the node:
no reply carries it.
"""

from __future__ import annotations

import dataclasses
import time
from logging import ERROR, INFO

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from atmflow import protocol, transport
from atmflow.client import cache
from atmflow.client.dp_training import dp_fine_tune
from atmflow.client.evaluation import evaluate_task, official_metric_names
from atmflow.client.gradients import mean_abs_gradient
from atmflow.client.privacy import dp_metrics, node_budget, spend
from atmflow.client.talos import calibrate_mask, mask_fraction
from atmflow.client.task import LocalTask, local_task, task_seed
from atmflow.client.training import fine_tune
from atmflow.config import RunConfig, load_config
from atmflow.data.splits import Split
from atmflow.data.tasks import task_spec
from atmflow.logs import timestamped_logs
from atmflow.merging import add_scaled, task_vector
from atmflow.models.family import get_family
from atmflow.privacy import secagg
from atmflow.privacy.scope import uses_secagg
from atmflow.threads import pin_threads

app = ClientApp(mods=[secagg.secagg_mod])  # the stages of a secure round go through Flower's SecAgg+ mod


def node_task(context: Context, cfg: RunConfig, msg: Message) -> str:
    """The task this node answers ``msg`` for (see module docstring)."""
    asked = protocol.requested_task(msg)
    if asked and asked not in cfg.tasks:
        raise ValueError(f"the server asked for task {asked!r}, which is not in the run's tasks {list(cfg.tasks)}")
    if protocol.NODE_TASK in context.node_config:
        task = str(context.node_config[protocol.NODE_TASK])
        if task not in cfg.tasks:
            raise ValueError(f"this node holds task {task!r}, which is not in the run's tasks {list(cfg.tasks)}")
        if asked and asked != task:
            raise ValueError(f"this node holds task {task!r} (its --node-config) and answers for no other; the server "
                             f"asked for task {asked!r}")
        return task
    if asked:
        return asked
    pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if n != len(cfg.tasks):
        raise ValueError(f"the simulation has {n} nodes but the run config lists {len(cfg.tasks)} tasks, and the "
                         "server did not say which task to answer for (atmflow's ServerApp does)")
    return cfg.tasks[pid]


def foreign_task(context: Context) -> str | None:
    """The task of this node's ``--node-config task`` when the run does not list it (else None). The
    handshake reply names it, so that the server refuses the run with the node and the task, instead of
    seeing an error reply it cannot tell from a crash."""
    task = context.node_config.get(protocol.NODE_TASK)
    if task is None:
        return None
    return None if str(task) in load_config(context.run_config).tasks else str(task)


def node_data(context: Context, cfg: RunConfig, task: str) -> RunConfig:
    """The run config with this node's ``dataset-path`` (node config) as the task's data location."""
    key = node_path_key(context)
    if key is None:
        return cfg
    path = node_path(context)
    if not task_spec(task, cfg.task_file_path).locatable:
        raise ValueError(f"node config {key} is set, but task {task!r} reads its data from an installed "
                         f"Python package, not a folder; remove {key} from this SuperNode's --node-config")
    if not path or "," in path or "=" in path:
        raise ValueError(f"node config {key} must be one folder or hub name without ',' or '='")
    sources = {**cfg.data_source_map, task: path}
    return cfg.model_copy(update={"data_sources": ",".join(f"{t}={w}" for t, w in sources.items())})


class NodeDataError(RuntimeError):
    """This node's data could not be loaded; the message sent to the server leaves out the node's path."""


def node_path_key(context: Context) -> str | None:
    """Which node-config key names this node's data: ``dataset-path``, its old name ``data-path``, or None."""
    given = [k for k in (protocol.NODE_DATASET_PATH, protocol.NODE_DATA_PATH) if k in context.node_config]
    if len(given) > 1:
        raise ValueError("node config sets both dataset-path and data-path (its old name); keep dataset-path")
    return given[0] if given else None


def node_path(context: Context) -> str:
    """This node's ``dataset-path`` (or ``data-path``), "" when none is set."""
    key = node_path_key(context)
    return "" if key is None else str(context.node_config[key]).strip()


def _setup(context: Context, msg: Message) -> tuple[RunConfig, str, LocalTask]:
    cfg = load_config(context.run_config)
    timestamped_logs()
    pin_threads(cfg.num_threads)  # torch and BLAS / OpenMP: the same model in process and under Ray
    task = node_task(context, cfg, msg)
    cfg = node_data(context, cfg, task)
    path = node_path(context)
    try:
        local = local_task(task, cfg)
    except Exception as err:
        if not path or path not in str(err):
            raise
        log(ERROR, "task %r: %s", task, err)  # the full message, with the path, in this node's log only
        raise NodeDataError(str(err).replace(path, "<this node's dataset-path>") + " (the full message with the "
                            "path is in this SuperNode's log)") from None
    node_budget(cfg, local.data.train)  # privacy = "dp": a budget that cannot be met fails the handshake
    return cfg, task, local


def _encoder(msg: Message, cfg: RunConfig) -> torch.nn.Module:
    """The run's encoder holding the received weights (strict: every tensor must match)."""
    encoder = get_family(cfg).pretrained_encoder().to(cfg.dtype)
    encoder.load_state_dict(msg.content.array_records[protocol.ARRAYS].to_torch_state_dict(), strict=True)
    return encoder


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """The task this node holds; when the message carries weights, also their evaluation (as ``evaluate``),
    so that a fresh run's handshake and round-0 evaluation cost one exchange. Either way the node loads its
    data, weights and head first, so that a missing data set or missing weights fail the handshake, before
    any training starts."""
    foreign = foreign_task(context)
    if foreign is not None:  # answer truthfully: the server refuses the run, naming this node and its task
        return Message(content=protocol.describe_reply(foreign), reply_to=msg)
    if protocol.ARRAYS in msg.content.array_records:
        return evaluate_model(msg, context)
    _, task, _ = _setup(context, msg)
    return Message(content=protocol.describe_reply(task), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received base on this task; reply with the task vector and train metrics.

    With ``finetune = "talos"`` only the TaLoS mask's parameters are fine-tuned (:mod:`atmflow.client.talos`).
    The task vector travels encoded by :mod:`atmflow.transport` (sparse tensors as indices + values).
    With ``tatr-exemplars > 0`` the reply also carries TATR's gradient estimate at the received base.
    With ``cache-dir`` set, an earlier identical fine-tuning is reused (see :mod:`atmflow.client.cache`).
    Under ``privacy = "secagg"`` the vector leaves the node only masked, inside a SecAgg+ round
    (:mod:`atmflow.privacy.secagg`); a plain train request is answered with the metrics only.
    With ``privacy = "dp"`` the fine-tuning is DP-SGD (:mod:`atmflow.client.dp_training`), booked in the node's
    privacy ledger before it starts, and the reply carries the epsilon spent (:mod:`atmflow.client.privacy`).
    """
    cfg, task, local = _setup(context, msg)
    received = protocol.requested_instructions(msg)
    instructions = dataclasses.replace(received, seed=task_seed(received.seed, task))
    progress = f"{protocol.requested_phase(msg) or 'fine-tuning'}, task {task}"
    budget = node_budget(cfg, local.data.train)
    spent = spend(context, budget, instructions, task) if budget is not None else 0
    encoder = _encoder(msg, cfg)
    base = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    key = cache.cache_key(base, instructions, task, cfg) if cfg.cache_dir else ""
    grads = _gradient_estimate(encoder, local, instructions, cfg.cache_dir, key) if instructions.tatr_exemplars else {}
    cached = cache.load(cfg.cache_dir, key) if key else None
    if cached is None:
        mask, talos_metrics = _talos_mask(encoder, local, instructions, cfg, progress)
        with local.autocast():
            split = local.data.split(instructions.split)
            stats = (fine_tune(encoder, local.head, split, instructions, local.device, mask, progress) if budget is None
                     else dp_fine_tune(encoder, local.head, split, instructions, local.device, budget, progress))
        metrics = {protocol.TRAIN_LOSS: stats.loss, protocol.NUM_EXAMPLES: float(stats.examples),
                   protocol.STEPS: float(stats.steps), protocol.WALL_S: stats.seconds, **talos_metrics}
        tau = task_vector({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, base,
                          get_family(cfg).trainable_keys(encoder))
    else:
        tau, metrics = cached
        encoder.load_state_dict(add_scaled(base, tau, 1.0))
        log(INFO, "%s: fine-tuning reused from the cache (%s)", progress, cfg.cache_dir)
    completed = instructions.evaluate_finetuned and _score_finetuned(task, encoder, local, metrics, progress)
    if key and (cached is None or completed):
        cache.store(cfg.cache_dir, key, tau, metrics)
    metrics[protocol.CACHE_HIT] = float(cached is not None)
    if budget is not None:
        metrics.update(dp_metrics(budget, spent))
    if secagg.is_secure_request(msg):  # Flower's SecAgg+ mod masks the vector and removes it from the reply
        content = secagg.masked_train_reply(protocol.train_metrics_reply(task, metrics), tau,
                                            cfg.secagg_clipping_range, instructions.seed)
    elif uses_secagg(cfg.privacy):  # a plain train request under secagg: no vector leaves this node unmasked
        content = protocol.train_metrics_reply(task, metrics)
    else:
        wire, spec = transport.encode(tau, cfg.transport_dtype)
        content = protocol.train_reply(task, ArrayRecord(wire), spec, metrics, ArrayRecord(grads) if grads else None)
    return Message(content=content, reply_to=msg)


def _score_finetuned(task: str, encoder: torch.nn.Module, local: LocalTask, metrics: dict[str, float],
                     progress: str) -> bool:
    """Add the fine-tuned model's scores that ``metrics`` lacks (a cached entry may hold only some): its test
    scores (``finetuned-<metric>``, the individual bound) and its validation accuracy (normalized lambda
    selection). True when something was added."""
    added = False
    wanted = (protocol.ACCURACY, protocol.LOSS, *official_metric_names(task))
    if any(protocol.FINETUNED + k not in metrics for k in wanted):
        scores = _evaluate(task, encoder, local, local.data.test, f"{progress}, evaluation of its model on test")
        metrics.update({protocol.FINETUNED + k: v for k, v in scores.items()})
        added = True
    if protocol.FINETUNED_VALIDATION_ACCURACY not in metrics:
        scores = _evaluate(task, encoder, local, local.data.validation,
                           f"{progress}, evaluation of its model on validation")
        metrics[protocol.FINETUNED_VALIDATION_ACCURACY] = scores[protocol.ACCURACY]
        added = True
    return added


def _evaluate(task: str, encoder: torch.nn.Module, local: LocalTask, split: Split, progress: str) -> dict[str, float]:
    """The task's scores of ``encoder`` on ``split``, with one INFO line (accuracy, examples/s)."""
    start = time.perf_counter()
    with local.autocast():
        scores = evaluate_task(task, encoder, local.head, split, local.device)
    seconds = time.perf_counter() - start
    log(INFO, "%s: %d examples, accuracy %.4f, loss %.4f, %.1f examples/s", progress, len(split),
        scores[protocol.ACCURACY], scores[protocol.LOSS], len(split) / max(seconds, 1e-9))
    return scores


def _talos_mask(encoder: torch.nn.Module, local: LocalTask, instructions: protocol.TrainInstructions,
                cfg: RunConfig, progress: str) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """``finetune = "talos"``: the TaLoS mask at the received base, calibrated on the validation split."""
    if cfg.finetune != "talos":
        return None, {}
    start = time.perf_counter()
    mask = calibrate_mask(encoder, local.head, local.data.validation.x, sparsity=cfg.talos_sparsity,
                          rounds=cfg.talos_rounds, seed=instructions.seed, device=local.device,
                          calibration=cfg.talos_calibration)
    seconds, kept = time.perf_counter() - start, mask_fraction(mask)
    log(INFO, "%s: TaLoS calibration, %d rounds in %.1f s, %.3f of the parameters fine-tuned", progress,
        cfg.talos_rounds, seconds, kept)
    return mask, {protocol.TALOS_CALIBRATION_S: seconds, protocol.TALOS_KEPT_FRACTION: kept}


def _gradient_estimate(encoder: torch.nn.Module, local: LocalTask, instructions: protocol.TrainInstructions,
                       cache_dir: str, key: str) -> dict[str, torch.Tensor]:
    """TATR's E|grad L_t| at the received base (before fine-tuning), from the cache when there."""
    grads = cache.load_grads(cache_dir, key, instructions.tatr_exemplars) if key else None
    if grads is None:
        with local.autocast():
            grads = mean_abs_gradient(encoder, local.head, local.data.train, instructions.tatr_exemplars,
                                      instructions.seed, local.device)
        if key:
            cache.store_grads(cache_dir, key, instructions.tatr_exemplars, grads)
    return grads


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the received weights with this task's frozen head on one split, and the task's
    official metric where it is not accuracy (GLUE CoLA, MRPC, QQP; see :mod:`atmflow.protocol`)."""
    cfg, task, local = _setup(context, msg)
    name = protocol.requested_split(msg)
    split = local.data.split(name)
    progress = f"{protocol.requested_phase(msg) or 'evaluation'}, task {task}, evaluation on {name}"
    scores = _evaluate(task, _encoder(msg, cfg), local, split, progress)
    official = {k: v for k, v in scores.items() if k in protocol.OFFICIAL_METRICS}
    content = protocol.evaluate_reply(task, scores[protocol.ACCURACY], scores[protocol.LOSS], len(split), official)
    return Message(content=content, reply_to=msg)
