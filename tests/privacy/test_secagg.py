"""Secure aggregation (privacy = "secagg"): Flower's SecAgg+ over the project's exchange.

The protocol tests use a small ClientApp with the project's SecAgg+ mod whose ``train`` answers with a
known task vector (through :func:`atmflow.privacy.secagg.masked_train_reply`, as the real client does), so
that the secure mean can be checked against the true one in seconds; the end-to-end test runs the real
client and server (PA-ATM, one round) with and without secagg.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto
from safetensors.torch import load_file

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.config import ConfigError, load_config
from atmflow.privacy.secagg import SecAggSettings, masked_train_reply, secagg_mod, secure_train_exchange
from atmflow.rounds.exchange import TaskFailureError
from atmflow.server.experiment import run_experiment
from atmflow.sim.inprocess import InProcessGrid

TASKS = ("animal-mnist", "digits", "fashion-mnist", "mnist")
SETTINGS = SecAggSettings(clipping_range=1.0, quantization_range=2**22, threshold=0.75)
EXPECTED = {"layer.weight": torch.zeros(40, 30), "layer.bias": torch.zeros(40), "other": torch.zeros(7, 3, 3)}


def task_vector(task: str) -> dict[str, torch.Tensor]:
    """A fixed task vector per task, entries within the clipping range."""
    gen = torch.Generator().manual_seed(TASKS.index(task) + 1)
    return {k: (torch.rand(v.shape, generator=gen) - 0.5) * 0.2 for k, v in EXPECTED.items()}


def stand_in_app(fail: dict[str, str] | None = None) -> ClientApp:
    """A ClientApp with the project's SecAgg+ mod whose ``train`` sends ``task_vector(task)``. ``fail``: task ->
    SecAgg+ stage in which that task's node raises (a node lost mid-round)."""
    fail = dict(fail or {})

    def lose_node(msg: Message, context: Context, call_next: Any) -> Message:
        task = TASKS[int(context.node_config["partition-id"])]
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        if fail.get(task) == stage:
            raise RuntimeError(f"node of {task} lost in stage {stage}")
        return call_next(msg, context)

    app = ClientApp(mods=[lose_node, secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        task = TASKS[int(context.node_config["partition-id"])]
        metrics = {protocol.TRAIN_LOSS: 0.5, protocol.NUM_EXAMPLES: 10.0}
        content = masked_train_reply(protocol.train_metrics_reply(task, metrics), task_vector(task),
                                     SETTINGS.clipping_range, seed=0)
        return Message(content=content, reply_to=msg)

    return app


class SpyGrid(InProcessGrid):
    """An in-process grid that keeps every reply it delivers (what the server receives)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def _deliver(self, message: Message) -> Message:
        reply = super()._deliver(message)
        self.replies.append(reply)
        return reply


def exchange(grid: InProcessGrid, tasks: tuple[str, ...] = TASKS) -> Any:
    node_tasks = {100 + i: t for i, t in enumerate(tasks)}
    return secure_train_exchange(grid, node_tasks, lambda _: protocol.content(), EXPECTED, SETTINGS, 60.0,
                                 "round 1 train")


def true_mean(tasks: list[str]) -> dict[str, torch.Tensor]:
    return {k: sum(task_vector(t)[k] for t in tasks) / len(tasks) for k in EXPECTED}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_server_gets_the_sum_and_no_message_carries_one_vector() -> None:
    grid = SpyGrid(stand_in_app(), {}, len(TASKS))
    result = exchange(grid)
    assert sorted(result.replies.valid) == list(TASKS) and result.replies.problems == {}
    assert max_diff(result.mean, true_mean(list(TASKS))) <= SETTINGS.step  # within one quantization step
    assert max_diff(result.mean, true_mean(list(TASKS))) > 0  # quantized, not the plain vectors
    assert len(grid.replies) == 4 * len(TASKS)  # four SecAgg+ stages, one reply per node each
    raw = [v.numpy().tobytes() for t in TASKS for v in task_vector(t).values()]
    for reply in grid.replies:
        assert all(len(record) == 0 for record in reply.content.array_records.values())  # the mod cleared them
        wire = recorddict_to_proto(reply.content).SerializeToString()
        assert not any(chunk in wire for chunk in raw)
    masked = [r for r in grid.replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == len(TASKS)
    for reply in masked:  # what the server sees of one vector is uncorrelated with it
        task = protocol.reply_task(reply)
        first = bytes_to_ndarray(reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS][1])
        own = task_vector(task)["layer.bias"].numpy()  # tensors in name order: layer.bias is the first
        assert first.shape == own.shape and abs(np.corrcoef(first.astype(float), own)[0, 1]) < 0.5
    assert sum(result.bytes_up.values()) == sum(len(recorddict_to_proto(r.content).SerializeToString())
                                                for r in grid.replies)


@pytest.mark.parametrize("stage", [Stage.COLLECT_MASKED_VECTORS, Stage.SHARE_KEYS, Stage.UNMASK])
def test_a_node_lost_mid_round_is_reconstructed_above_the_threshold(stage: str) -> None:
    result = exchange(InProcessGrid(stand_in_app({"digits": stage}), {}, len(TASKS)))
    if stage == Stage.UNMASK:  # its masked vector arrived: the others' shares remove its masks, it counts
        assert sorted(result.replies.valid) == list(TASKS) and result.replies.problems == {}
        assert max_diff(result.mean, true_mean(list(TASKS))) <= SETTINGS.step
        return
    others = [t for t in TASKS if t != "digits"]
    assert sorted(result.replies.valid) == others
    assert "lost in stage" in result.replies.problems["digits"]
    assert max_diff(result.mean, true_mean(others)) <= SETTINGS.step
    with pytest.raises(TaskFailureError, match="digits"):  # on-missing-task = "fail"
        result.replies.enforce("fail")
    assert result.replies.enforce("skip").valid.keys() == set(others)


def test_below_the_threshold_no_sum_and_the_round_fails() -> None:
    lost = {"digits": Stage.COLLECT_MASKED_VECTORS, "mnist": Stage.COLLECT_MASKED_VECTORS}
    with pytest.raises(TaskFailureError, match="reconstruction threshold") as err:
        exchange(InProcessGrid(stand_in_app(lost), {}, len(TASKS)))
    assert {"digits", "mnist"} <= set(err.value.problems)


def test_a_vector_outside_the_clipping_range_is_refused_not_clipped() -> None:
    tau = {"w": torch.tensor([0.5, -2.5])}
    with pytest.raises(ValueError, match="secagg-clipping-range"):
        masked_train_reply(protocol.content(), tau, 1.0, seed=0)


@pytest.mark.parametrize("merge", ["ties", "breadcrumbs", "dare", "tatr", "ties+tatr"])
def test_merges_that_need_single_vectors_are_refused(merge: str) -> None:
    with pytest.raises(ConfigError, match="only the sum of the task vectors"):
        load_config({"privacy": "secagg", "strategy": "ta", "merge": merge})
    with pytest.raises(ConfigError, match="only the sum"):
        load_config({"privacy": "secagg", "strategy": "pa-atm", "merge": merge})


def test_other_privacy_refusals() -> None:
    with pytest.raises(ConfigError, match="only the sum of the task vectors"):  # secagg's rules hold with DP too
        load_config({"privacy": "secagg+dp", "dp-epsilon": 4, "strategy": "ta", "merge": "dare"})
    with pytest.raises(ConfigError, match="aggregation='uniform'"):
        load_config({"privacy": "secagg", "aggregation": "examples"})
    with pytest.raises(ConfigError, match="secagg-quantization-range"):  # 2**30 levels: the sum of 4 would wrap
        load_config({"privacy": "secagg", "secagg-quantization-range": 2**30})
    for merge, strategy in (("mean", "pa-atm"), ("mean", "ph-atm"), ("ta", "ta")):
        assert load_config({"privacy": "secagg", "strategy": strategy, "merge": merge}).privacy == "secagg"


@pytest.mark.heavy
def test_secagg_pa_atm_matches_the_plain_run(tiny: dict[str, Any]) -> None:
    """Same seed, one round: the merged encoders differ by less than one quantization step (the step's mean
    error), the scores agree, and no reply of the secure run (the individual fine-tuning's included)
    carries a task vector. A second secure run repeats the first bit for bit (the stochastic quantization is
    seeded)."""
    runs = {}
    for name, privacy in (("none", "none"), ("secagg", "secagg"), ("secagg-again", "secagg")):
        cfg = load_config({**tiny, "run-name": name, "strategy": "pa-atm", "rounds": 1, "budget-epochs": 1,
                           "privacy": privacy})
        grid = SpyGrid(client_app, cfg.to_run_config(), len(cfg.tasks))
        runs[name] = (run_experiment(grid, cfg), grid)
    plain, secure = runs["none"][0], runs["secagg"][0]
    out = tiny["output-dir"]
    a, b = load_file(f"{out}/none/final_encoder.safetensors"), load_file(f"{out}/secagg/final_encoder.safetensors")
    step = SecAggSettings(1.0, 2**22, 0.75).step
    assert 0 < max_diff(a, b) <= step + 1e-6
    assert max_diff(b, load_file(f"{out}/secagg-again/final_encoder.safetensors")) == 0
    assert abs(plain.rounds[0].avg_accuracy - secure.rounds[0].avg_accuracy) <= 0.05
    assert secure.rounds[0].geometry == {} and plain.rounds[0].geometry["mean_abs_cosine"] > 0
    assert sorted(secure.individual) == sorted(plain.individual)
    trains = [r for r in runs["secagg"][1].replies if r.metadata.message_type == MessageType.TRAIN]
    assert trains and all(len(rec) == 0 for r in trains for rec in r.content.array_records.values())
