"""The wire format between the server and the task clients: one place for every message key.

=========  =============================================  =============================================
message    server -> client                               client -> server
=========  =============================================  =============================================
describe   (query) nothing; or, as ``evaluate``, weights  ``task``: the task this node holds [, and
           and split (handshake + round-0 evaluation)     ``metrics`` as for evaluate]
train      ``arrays``: base weights; ``config``: epochs,   ``arrays``: task vector (fine-tuned tensors
           optimizer, lr, weight-decay, batch-size,        only), encoded by :mod:`atmflow.transport`
           full-batch, seed, evaluate-finetuned, split,    as ``transport``'s spec says (sparse tensors
           tatr-exemplars, lr-schedule, warmup-steps,      as indices + values); ``metrics``: train-loss,
           grad-clip, dp-epochs-before
                                                           num-examples, steps, wall-s [, finetuned-
                                                           accuracy/-loss/-validation-accuracy,
                                                           talos-*, dp-*]; ``grads`` (if
                                                           tatr-exemplars > 0): E|grad L| at the
                                                           received base (paper 003, Eq. 6)
evaluate   ``arrays``: weights; ``config``: split          ``metrics``: accuracy, loss, num-examples
                                                           [, the task's official metric: matthews or f1]
=========  =============================================  =============================================

Every reply carries the sender's task name under ``task`` so the server never has to guess.

Under ``privacy = "secagg"`` a train round is Flower's SecAgg+ protocol (four train exchanges; the task
vector leaves the node quantized and masked, :mod:`atmflow.privacy.secagg`), and a train reply outside it
carries no ``arrays`` (:func:`train_metrics_reply`).

In a simulation whose number of SuperNodes differs from the number of tasks, one node serves several tasks
(:mod:`atmflow.server.routing`): every request then also carries a ``serve`` config record naming the task
the node answers for. A deployment's SuperNode holds the one task of its node config and refuses another.

Official metrics. A node whose task has an official metric other than accuracy (GLUE CoLA: Matthews
correlation; MRPC, QQP: F1 of the positive class; :data:`atmflow.data.glue.GLUE_TASKS`) sends it
besides accuracy and loss, computed on the same predictions, under its name in
:data:`OFFICIAL_METRICS`; with ``evaluate-finetuned`` its train reply carries it as ``finetuned-<name>``.
Other tasks send accuracy and loss only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

DESCRIBE = "query.describe"
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
GRADS = "grads"
TRANSPORT = "transport"  # config record of a train reply: {"spec": JSON}, see atmflow.transport
TASK = "task"

# Metric keys of the replies (the ``metrics`` record)
ACCURACY = "accuracy"
LOSS = "loss"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
STEPS = "steps"
WALL_S = "wall-s"
MATTHEWS = "matthews"  # GLUE CoLA's official metric (Matthews correlation)
F1 = "f1"  # GLUE MRPC's and QQP's official metric (F1 of the positive class)
OFFICIAL_METRICS = (MATTHEWS, F1)  # the official metrics a reply may carry besides accuracy and loss
FINETUNED = "finetuned-"  # prefix of the fine-tuned model's test scores in a train reply (evaluate-finetuned)
FINETUNED_ACCURACY = FINETUNED + ACCURACY
FINETUNED_LOSS = FINETUNED + LOSS
# the fine-tuned model's accuracy on the node's validation split: one-shot lambda selection by normalized
# validation accuracy divides by it (paper 004, A.1)
FINETUNED_VALIDATION_ACCURACY = FINETUNED + "validation-" + ACCURACY
# what a train reply must carry when evaluate-finetuned
FINETUNED_SCORES = (FINETUNED_ACCURACY, FINETUNED_LOSS, FINETUNED_VALIDATION_ACCURACY)
CACHE_HIT = "cache-hit"
TALOS_CALIBRATION_S = "talos-calibration-s"
TALOS_KEPT_FRACTION = "talos-kept-fraction"
# privacy = "dp" (atmflow.privacy.budget): every train reply carries the epsilon the client has spent in the run
# after this fine-tuning, at its delta, with its noise multiplier
DP_EPSILON = "dp-epsilon"
DP_DELTA = "dp-delta"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_METRICS = (DP_EPSILON, DP_DELTA, DP_NOISE_MULTIPLIER)
SPLIT = "split"  # config key of an evaluate message
PHASE = "phase"  # config record of every request: what the server is doing ("round 2 train", ...), for client logs
SPEC = "spec"  # key of the transport config record
SERVE = "serve"  # config record of a request to a simulated node serving several tasks: {task: the task to answer for}

# Node config keys of a SuperNode (flower-supernode --node-config "task='cars' dataset-path='/data/cars'");
# the path is read on the node only and never sent (atmflow.client.app.node_data)
NODE_TASK = "task"
NODE_DATASET_PATH = "dataset-path"
NODE_DATA_PATH = "data-path"  # the old name of dataset-path, still accepted


@dataclass(frozen=True)
class TrainInstructions:
    """What a client does with a train message (sent by the strategy, read by the client)."""

    epochs: int
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    full_batch: bool
    seed: int
    evaluate_finetuned: bool = False
    split: str = "train"  # PH-ATM fine-tunes on "validation"
    tatr_exemplars: int = 0  # > 0: also send E|grad L_t| over this many training examples
    lr_schedule: str = "constant"  # or "cosine" (atmflow.client.training.learning_rate)
    warmup_steps: int = 0  # cosine: linear warm-up steps
    grad_clip: float = 0.0  # max gradient norm per step; 0 = no clipping
    dp_epochs_before: int = 0  # privacy = "dp": epochs of DP-SGD the plan had this client do earlier in the run

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({
            "epochs": self.epochs, "optimizer": self.optimizer, "lr": self.lr,
            "weight-decay": self.weight_decay, "batch-size": self.batch_size,
            "full-batch": self.full_batch, "seed": self.seed, "evaluate-finetuned": self.evaluate_finetuned,
            "split": self.split, "tatr-exemplars": self.tatr_exemplars, "lr-schedule": self.lr_schedule,
            "warmup-steps": self.warmup_steps, "grad-clip": self.grad_clip,
            "dp-epochs-before": self.dp_epochs_before,
        })

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstructions:
        return cls(
            epochs=int(record["epochs"]), optimizer=str(record["optimizer"]), lr=float(record["lr"]),
            weight_decay=float(record["weight-decay"]), batch_size=int(record["batch-size"]),
            full_batch=bool(record["full-batch"]), seed=int(record["seed"]),
            evaluate_finetuned=bool(record["evaluate-finetuned"]), split=str(record["split"]),
            tatr_exemplars=int(record["tatr-exemplars"]), lr_schedule=str(record["lr-schedule"]),
            warmup_steps=int(record["warmup-steps"]), grad_clip=float(record["grad-clip"]),
            dp_epochs_before=int(record["dp-epochs-before"]),
        )


def task_record(task: str) -> ConfigRecord:
    return ConfigRecord({TASK: task})


def reply_task(reply: Message) -> str | None:
    """The task name a reply says it comes from (None for error replies)."""
    if reply.has_error() or TASK not in reply.content.config_records:
        return None
    return str(reply.content.config_records[TASK][TASK])


def content(**records: object) -> RecordDict:
    return RecordDict(dict(records))  # type: ignore[arg-type]


def train_request(arrays: ArrayRecord, instructions: TrainInstructions) -> RecordDict:
    """A train message's content: the base weights and the instructions."""
    return content(**{ARRAYS: arrays, CONFIG: instructions.to_record()})


def evaluate_request(arrays: ArrayRecord, split: str) -> RecordDict:
    """An evaluate message's content (also a handshake that evaluates): the weights and the split."""
    return content(**{ARRAYS: arrays, CONFIG: ConfigRecord({SPLIT: split})})


def with_phase(records: RecordDict, phase: str) -> RecordDict:
    """``records`` labelled with the server's phase (``round 2 train``, ``individual fine-tuning``, ...),
    which the client names in its progress log lines."""
    records.config_records[PHASE] = ConfigRecord({PHASE: phase})
    return records


def requested_phase(msg: Message) -> str:
    """The phase a request was sent in ("" when the server did not say)."""
    record = msg.content.config_records.get(PHASE)
    return str(record[PHASE]) if record is not None and PHASE in record else ""


def for_task(records: RecordDict, task: str) -> RecordDict:
    """A copy of ``records`` (sharing its records) that asks the node to answer for ``task`` (:data:`SERVE`)."""
    out = RecordDict(dict(records.items()))
    out.config_records[SERVE] = task_record(task)
    return out


def requested_task(msg: Message) -> str:
    """The task a request asks the node to answer for ("" when it does not say: the node's own task)."""
    record = msg.content.config_records.get(SERVE)
    return str(record[TASK]) if record is not None and TASK in record else ""


def requested_split(msg: Message) -> str:
    return str(msg.content.config_records[CONFIG][SPLIT])


def requested_instructions(msg: Message) -> TrainInstructions:
    return TrainInstructions.from_record(msg.content.config_records[CONFIG])


def describe_reply(task: str) -> RecordDict:
    return content(**{TASK: task_record(task)})


def evaluate_reply(task: str, accuracy: float, loss: float, num_examples: int,
                   official: Mapping[str, float] | None = None) -> RecordDict:
    """An evaluate reply's content; ``official``: the task's official metrics by name (:data:`OFFICIAL_METRICS`)."""
    official = dict(official or {})
    unknown = sorted(set(official) - set(OFFICIAL_METRICS))
    if unknown:
        raise ValueError(f"unknown official metric(s) {unknown}; known: {list(OFFICIAL_METRICS)}")
    metrics = MetricRecord({ACCURACY: accuracy, LOSS: loss, NUM_EXAMPLES: num_examples, **official})
    return content(**{METRICS: metrics, TASK: task_record(task)})


def train_reply(task: str, wire: ArrayRecord, spec: str, metrics: dict[str, float],
                grads: ArrayRecord | None = None) -> RecordDict:
    """A train reply's content: the encoded task vector with its transport spec, the train metrics and,
    when asked for, TATR's gradient estimate."""
    records: dict[str, object] = {ARRAYS: wire, METRICS: MetricRecord(metrics), TASK: task_record(task),
                                  TRANSPORT: ConfigRecord({SPEC: spec})}
    if grads is not None:
        records[GRADS] = grads
    return content(**records)


def train_metrics_reply(task: str, metrics: dict[str, float]) -> RecordDict:
    """A train reply without the task vector (under secure aggregation, :mod:`atmflow.privacy.secagg`):
    the task name and the train metrics only."""
    return content(**{METRICS: MetricRecord(metrics), TASK: task_record(task)})


def transport_spec(reply: Message) -> str | None:
    """The transport spec of a train reply (None: plain arrays)."""
    record = reply.content.config_records.get(TRANSPORT)
    return None if record is None else str(record[SPEC])
