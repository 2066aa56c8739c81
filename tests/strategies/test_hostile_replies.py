"""Nothing a client sends is trusted (issue 16): malformed replies through the in-process grid, and the checks
they go through (metrics, task identity, transport spec before allocation, a finite merged model)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.rounds.exchange import (
    NonFiniteModelError,
    TaskFailureError,
    check_metrics,
    collect_replies,
    require_finite,
    task_messages,
)
from atmflow.server.experiment import run_experiment
from atmflow.server.results import RunResults
from atmflow.sim.inprocess import InProcessGrid
from atmflow.strategies.merge_step import MergeStep
from atmflow.transport import TransportError, decode, encode

TASKS = ["animal-mnist", "digits", "fashion-mnist", "mnist"]
Edit = Callable[[Message], None]


class Tamper:
    """The real ClientApp, except that the node holding ``task`` passes its first reply to a ``message_type``
    message through ``edit`` (which changes it in place), as a hostile or broken client would."""

    def __init__(self, task: str, message_type: str, edit: Edit) -> None:
        self.partition, self.message_type, self.edit, self.done = sorted(TASKS).index(task), message_type, edit, False

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        mine = context.node_config["partition-id"] == self.partition
        if mine and not self.done and message.metadata.message_type == self.message_type:
            self.done = True
            self.edit(reply)
        return reply


def set_metric(key: str, value: float | None) -> Edit:
    def edit(reply: Message) -> None:
        metrics = dict(reply.content.metric_records[protocol.METRICS])
        if value is None:
            del metrics[key]
        else:
            metrics[key] = value
        reply.content.metric_records[protocol.METRICS] = MetricRecord(metrics)
    return edit


def claim_task(task: str) -> Edit:
    def edit(reply: Message) -> None:
        reply.content.config_records[protocol.TASK] = protocol.task_record(task)
    return edit


def huge_sparse_spec(reply: Message) -> None:
    """The first tensor announced as a sparse tensor of 2**40 entries with no non-zero entry (consistent wire)."""
    spec = json.loads(protocol.transport_spec(reply) or "")
    wire = reply.content.array_records[protocol.ARRAYS].to_torch_state_dict()
    name = next(iter(spec["tensors"]))
    for key in (name, f"{name}.indices", f"{name}.values"):
        wire.pop(key, None)
    wire[f"{name}.indices"], wire[f"{name}.values"] = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    spec["tensors"][name] = {"form": "sparse", "shape": [2**40], "source": "float32"}
    reply.content.array_records[protocol.ARRAYS] = ArrayRecord(wire)
    reply.content.config_records[protocol.TRANSPORT] = ConfigRecord({protocol.SPEC: json.dumps(spec)})


def _run(app: Any, overrides: dict[str, Any]) -> RunResults:
    cfg = load_config({**overrides, "tasks": ",".join(TASKS)})
    return run_experiment(InProcessGrid(app, cfg.to_run_config(), len(cfg.tasks)), cfg)


TRAIN, DESCRIBE = MessageType.TRAIN, protocol.DESCRIBE
# Through the grid, one case per check (each run costs a handshake and a round); the other malformed metrics
# (negative count, missing or infinite train-loss, missing loss) are covered by test_check_metrics_rules.
CASES = {  # name: (message type tampered, edit, task the failure is named by, words of the reason)
    "nan-count": (TRAIN, set_metric(protocol.NUM_EXAMPLES, math.nan), "digits", "'num-examples' = nan"),
    "claims-digits": (TRAIN, claim_task("digits"), "mnist", "claims task 'digits'"),
    "huge-spec": (TRAIN, huge_sparse_spec, "digits", "differs from the model's"),
    "accuracy-1.5": (DESCRIBE, set_metric(protocol.ACCURACY, 1.5), "digits", "'accuracy' = 1.5 is not in [0, 1]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_invalid_reply_stops_the_run_under_fail_naming_task_node_and_field(tiny: dict[str, Any],
                                                                               case: str) -> None:
    message_type, edit, task, reason = CASES[case]
    sender = "mnist" if case == "claims-digits" else "digits"
    with pytest.raises(TaskFailureError) as err:
        _run(Tamper(sender, message_type, edit), {**tiny, "run-name": "fail", "rounds": 1, "individual": False,
                                                   "aggregation": "examples", "merge": "ta"})
    assert set(err.value.problems) == {task}
    assert reason in err.value.problems[task] and "node" in err.value.problems[task]
    assert not (Path(tiny["output-dir"]) / "fail" / "checkpoint.json").exists()  # nothing merged, nothing saved


def test_under_skip_a_nan_count_never_reaches_the_merge(tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, float]] = []
    apply = MergeStep.apply

    def spy(self: MergeStep, base: Any, vectors: Any, num_examples: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(dict(num_examples))
        return apply(self, base, vectors, num_examples, *args, **kwargs)

    monkeypatch.setattr(MergeStep, "apply", spy)
    res = _run(Tamper("digits", TRAIN, set_metric(protocol.NUM_EXAMPLES, math.nan)),
               {**tiny, "run-name": "skip", "rounds": 1, "individual": False, "aggregation": "examples",
                "merge": "ta", "on-missing-task": "skip"})
    assert sorted(res.rounds[0].missing) == ["digits"] and "num-examples" in res.rounds[0].missing["digits"]
    assert seen and all(sorted(n) == sorted(set(TASKS) - {"digits"}) for n in seen)
    assert all(math.isfinite(v) and v > 0 for n in seen for v in n.values())
    final = load_file(str(Path(tiny["output-dir"]) / "skip" / "final_encoder.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in final.values())


def test_a_non_finite_merged_model_is_never_checkpointed(tiny: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    apply = MergeStep.apply

    def poisoned(self: MergeStep, *args: Any, **kwargs: Any) -> Any:
        merged = dict(apply(self, *args, **kwargs))
        name = sorted(merged)[0]
        merged[name] = merged[name].clone().fill_(math.inf)
        return merged

    monkeypatch.setattr(MergeStep, "apply", poisoned)
    with pytest.raises(NonFiniteModelError, match=r"round 1: the merged model .*non-finite"):
        _run(client_app, {**tiny, "run-name": "inf", "rounds": 1, "individual": False})
    out = Path(tiny["output-dir"]) / "inf"
    assert not (out / "checkpoint.json").exists() and not (out / "final_encoder.safetensors").exists()


@pytest.fixture
def identity() -> None:
    """Messages built outside a Flower run need a run identity (as in tests/deployment)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


@pytest.mark.usefixtures("identity")
def test_check_metrics_rules() -> None:
    def reply(metrics: dict[str, Any]) -> Any:
        return Message(content=protocol.content(metrics=MetricRecord(metrics)), dst_node_id=1, message_type=TRAIN)

    good = {protocol.NUM_EXAMPLES: 10.0, protocol.TRAIN_LOSS: 0.5, protocol.STEPS: 3.0}
    assert check_metrics(reply(good), TRAIN) is None
    assert "is not a finite count > 0" in (check_metrics(reply({**good, protocol.NUM_EXAMPLES: 0.0}), TRAIN) or "")
    assert "'num-examples' = -5.0" in (check_metrics(reply({**good, protocol.NUM_EXAMPLES: -5.0}), TRAIN) or "")
    assert "'train-loss' = inf" in (check_metrics(reply({**good, protocol.TRAIN_LOSS: math.inf}), TRAIN) or "")
    assert "['train-loss'] missing" in (check_metrics(reply({protocol.NUM_EXAMPLES: 1.0}), TRAIN) or "")
    assert "'steps'" in (check_metrics(reply({**good, protocol.STEPS: math.nan}), TRAIN) or "")
    assert "'finetuned-accuracy'" in (check_metrics(reply({**good, protocol.FINETUNED_ACCURACY: -0.1}), TRAIN) or "")
    assert check_metrics(reply({**good, protocol.MATTHEWS: -0.5}), TRAIN) is None  # a correlation may be negative
    evaluate = {protocol.ACCURACY: 0.9, protocol.LOSS: 0.3, protocol.NUM_EXAMPLES: 20}
    assert check_metrics(reply(evaluate), MessageType.EVALUATE) is None
    assert "['accuracy', 'loss'] missing" in (check_metrics(reply(good), MessageType.EVALUATE) or "")
    no_metrics = Message(content=protocol.content(), dst_node_id=1, message_type=TRAIN)
    assert "no 'metrics' record" in (check_metrics(no_metrics, TRAIN) or "")


@pytest.mark.usefixtures("identity")
def test_a_reply_claiming_another_nodes_task_is_not_merged_as_that_task() -> None:
    node_tasks = {11: "mnist", 22: "digits"}
    sent = task_messages(node_tasks, TRAIN, lambda _: protocol.content())
    replies = []
    for i, (message, claim) in enumerate(zip(sent, ["digits", "digits"], strict=True)):
        message.metadata.__dict__["_message_id"] = f"sent-{i}"
        reply = Message(content=protocol.content(task=protocol.task_record(claim)), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
        replies.append(reply)
    collected = collect_replies(replies, node_tasks, "round 1 train", sent)
    assert list(collected.valid) == ["digits"] and collected.valid["digits"] is replies[1]
    assert "node 11" in collected.problems["mnist"] and "claims task 'digits'" in collected.problems["mnist"]


def test_a_spec_claiming_a_huge_tensor_is_refused_before_allocating() -> None:
    wire, spec = encode({"w": torch.zeros(4, 3)})
    parsed = json.loads(spec)
    parsed["tensors"]["w"]["shape"] = [2**40]
    huge = {"w.indices": torch.zeros(0, dtype=torch.int64), "w.values": torch.zeros(0)}
    with pytest.raises(TransportError, match=r"spec shape \[1099511627776\] differs from the model's \[4, 3\]"):
        decode(huge, json.dumps(parsed), {"w": (4, 3)})
    parsed["tensors"]["w"]["shape"] = [-1, "3"]
    with pytest.raises(TransportError, match="shape"):
        decode(huge, json.dumps(parsed))
    assert decode(wire, spec, {"w": (4, 3)})["w"].shape == (4, 3)


def test_require_finite_names_the_tensor() -> None:
    require_finite({"a": torch.ones(2)}, "x")
    with pytest.raises(NonFiniteModelError, match=r"merged: tensor 'b' has non-finite"):
        require_finite({"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}, "merged")
