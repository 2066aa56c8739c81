"""Secure aggregation of a round's task vectors with Flower's SecAgg+ (Bell et al., CCS 2020).

Under ``privacy = "secagg"`` the server learns only the mean (hence the sum) of a round's task vectors,
never one task's vector. Nothing here is new cryptography: the server runs Flower's own
:class:`~flwr.server.workflow.SecAggPlusWorkflow` (key agreement, Shamir sharing of the mask seeds,
dropout recovery, unmasking) over the project's ``Grid``, and each node runs Flower's
:func:`~flwr.client.mod.secaggplus_mod` (quantization, pairwise and private masks) around the project's
``train`` function. How the two are adapted to the project's Message-API rounds:

* server: :func:`secure_train_exchange` replaces a round's plain train exchange. The workflow asks a
  legacy strategy (:class:`_MeanCollector`) whom to train; its stage "collect masked vectors" sends each
  node the project's own train request (:class:`_ProjectSecAggPlus`), plus SecAgg+'s config record.
  The workflow returns the weighted mean ``sum_i w_i tau_i / sum_i w_i`` of the nodes whose masked vector
  arrived; every node weighs 1, so it is the plain mean of the delivered task vectors.
* node: :func:`secagg_mod` hands the train messages of a secure round to Flower's mod, which calls
  ``train``; ``train`` then answers with :func:`masked_train_reply`: the task vector in Flower's legacy
  fit-result records, which the mod quantizes, masks and clears. The metrics (train loss, example counts,
  the task name) travel in the clear, as in a plain round. Under secagg a train request outside a secure
  round (the individual upper bound's fine-tuning) is answered with metrics only: no task vector leaves
  a node unmasked.

Quantization (Flower's ``quantize``): each entry ``x`` of a task vector, clipped to ``[-c, c]``, becomes
``round_stochastic((x + c) * Q / (2c))``; the mean the server gets differs from the true mean by less than
one step ``2c / Q`` per entry (:attr:`SecAggSettings.step`). A node refuses a vector with an entry outside
``[-c, c]`` (:class:`ClippingRangeError`) instead of clipping it silently.

A node lost mid-round: SecAgg+ removes the masks of a node that dropped after sharing its keys when at
least ``threshold`` of the shares answer, and the server gets the mean of the others; the lost task is then
missing, and ``on-missing-task`` decides (``fail``: stop; ``skip``: merge the others). With fewer answers
than the threshold no sum can be recovered and the round fails whatever the policy
(:func:`secure_train_exchange`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from atmflow.privacy.scope import MODULUS_RANGE
from atmflow.rounds.exchange import Replies, TaskFailureError, check_arrays, client_error, collect_replies, reply_node

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+'s parameters (run-config keys ``secagg-clipping-range``, ``secagg-quantization-range``,
    ``secagg-threshold``). Every node holds a share of every other node's secrets (``num_shares`` = all
    nodes); ``threshold`` is the fraction of them needed to reconstruct one (at least 2, Flower's rule)."""

    clipping_range: float
    quantization_range: int
    threshold: float

    @property
    def step(self) -> float:
        """One quantization step, ``2c / Q``: the bound on the error of each entry of the secure mean."""
        return 2 * self.clipping_range / self.quantization_range

    def workflow(self, requests: Mapping[int, RecordDict], timeout: float) -> _ProjectSecAggPlus:
        """Flower's SecAgg+ workflow with these parameters; ``requests``: each node's train request."""
        return _ProjectSecAggPlus(requests, num_shares=1.0, reconstruction_threshold=self.threshold,
                                  max_weight=1.0, clipping_range=self.clipping_range,
                                  quantization_range=self.quantization_range, modulus_range=MODULUS_RANGE,
                                  timeout=timeout)


# ---------------------------------------------------------------------------------------------------------
# Node side


def is_secure_request(msg: Message) -> bool:
    """Whether a message is a stage of a SecAgg+ round (it carries SecAgg+'s config record)."""
    return msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: the stages of a secure round go through Flower's ``secaggplus_mod``; every other
    message (describe, evaluate, a plain train request) goes straight to the app."""
    if is_secure_request(msg):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


class ClippingRangeError(ValueError):
    """A task vector has an entry outside SecAgg+'s clipping range; it is not clipped silently."""


def masked_train_reply(content: RecordDict, tau: Mapping[str, torch.Tensor], clipping_range: float,
                       seed: int) -> RecordDict:
    """A secure round's train reply: ``content`` (the task name and metrics, without the task vector) plus
    the task vector as Flower's legacy fit result with weight 1, which ``secaggplus_mod`` quantizes, masks
    and removes before the reply leaves the node. Tensors go in name order (:func:`vector_order`).

    Flower's quantization rounds stochastically with numpy's global generator
    (``flwr.common.secure_aggregation.quantization._stochastic_round``), right after this reply is returned
    and before anything else draws from it; seeding that generator with ``seed`` (the task's seed of this
    round) makes a secure run repeat bit for bit."""
    for key in vector_order(tau):
        peak = float(tau[key].abs().max()) if tau[key].numel() else 0.0
        if not math.isfinite(peak) or peak > clipping_range:
            raise ClippingRangeError(
                f"task-vector tensor {key!r} has an entry of magnitude {peak:.4g}, outside secagg-clipping-range "
                f"= {clipping_range:g}; SecAgg+ would clip it. Set secagg-clipping-range above {peak:.4g} in the "
                "run config (a larger range coarsens the quantization: step = 2 * range / secagg-quantization-range)")
    arrays = [tau[k].detach().cpu().numpy() for k in vector_order(tau)]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples=1, metrics={})
    legacy = compat.fitres_to_recorddict(fitres, keep_input=False)
    for name, record in legacy.items():
        content[name] = record
    np.random.seed(seed % 2**32)  # Flower's quantization reads the global generator
    return content


def vector_order(tensors: Iterable[str]) -> list[str]:
    """The order of a task vector's tensors in SecAgg+'s flat list (the same on the nodes and the server)."""
    return sorted(tensors)


# ---------------------------------------------------------------------------------------------------------
# Server side


@dataclass
class SecureRound:
    """What a secure train exchange delivered.

    ``mean``: the mean of the task vectors of the tasks in ``replies.valid`` (None when SecAgg+ could not
    finish); ``replies``: the valid train replies (task name and metrics, no vector) and why each other
    task has none; ``bytes_up``: per task, the bytes its node sent over the four stages (what the server
    sees of it); ``bytes_down``: the bytes the server sent to all nodes."""

    mean: StateDict | None
    replies: Replies
    bytes_up: dict[str, int]
    bytes_down: int


def secure_train_exchange(grid: Grid, node_tasks: Mapping[int, str], build: Callable[[str], RecordDict],
                          expected: Mapping[str, torch.Tensor], settings: SecAggSettings, timeout: float,
                          phase: str, required: Sequence[str] = ()) -> SecureRound:
    """Every task node fine-tunes (its train request ``build(task)``) and the server receives the mean of
    their task vectors through SecAgg+, never one vector.

    Raises :class:`TaskFailureError` when no mean can be recovered (fewer answers than the threshold) or
    when a node whose masked vector is in the sum sent an invalid reply (its vector cannot be taken out
    of the sum); a task lost otherwise is listed in ``replies.problems`` for ``on-missing-task``.
    ``timeout`` bounds each of the four stages.
    """
    recording = RecordingGrid(grid)
    collector = _MeanCollector(node_tasks, recording)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=collector)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    settings.workflow({node: build(task) for node, task in node_tasks.items()}, timeout)(recording, context)

    problems: dict[str, str] = {}
    valid: dict[str, Message] = {}
    for stage, (sent, replies) in zip(Stage.all(), recording.exchanges, strict=False):
        nodes = {m.metadata.dst_node_id: node_tasks[m.metadata.dst_node_id] for m in sent}
        if stage == Stage.COLLECT_MASKED_VECTORS:
            collected = collect_replies(replies, nodes, phase, sent, MessageType.TRAIN, required)
            valid, found = collected.valid, collected.problems
        else:
            found = stage_problems(replies, nodes, sent)
        for task, why in found.items():
            if task in valid:  # lost at unmasking, after its masked vector arrived: the others' shares unmask it
                log(WARNING, "%s: the node of task %s was lost in SecAgg+ stage %r (%s); its vector is in the sum",
                    phase, task, stage, why)
            else:
                problems.setdefault(task, f"SecAgg+ stage {stage!r}: {why}")
    summed = {node_tasks[n] for n in collector.nodes}
    if collector.mean is None:
        problems.setdefault("secure aggregation", f"fewer nodes answered than SecAgg+'s reconstruction threshold "
                                                  f"(secagg-threshold = {settings.threshold:g} of the nodes), so "
                                                  "no sum could be recovered")
        raise TaskFailureError(phase, problems)
    mixed_in = sorted(summed & set(problems))
    if mixed_in:
        why = "its masked vector is already in the secure sum and cannot be taken out, so the round cannot go on"
        raise TaskFailureError(phase, {t: f"{problems[t]}; {why}" for t in mixed_in})
    mean = _unflatten(collector.mean, expected)
    problem = check_arrays(mean, expected)
    if problem is not None:
        raise TaskFailureError(phase, {"secure aggregation": f"the secure mean does not fit the model: {problem}"})
    return SecureRound(mean, Replies(phase, valid, problems), recording.bytes_up(node_tasks), recording.sent_bytes)


def stage_problems(replies: Iterable[Message], node_tasks: Mapping[int, str],
                   sent: Sequence[Message]) -> dict[str, str]:
    """The tasks whose node sent an error reply, or no reply, in one SecAgg+ stage, and why."""
    problems: dict[str, str] = {}
    answered = set()
    for reply in replies:
        node = reply_node(reply, sent)
        answered.add(node)
        if reply.has_error():
            problems[node_tasks.get(node, f"node {node}")] = (f"error {reply.error.code} on node {node}: "
                                                              f"{client_error(reply.error.reason)}")
    for node, task in node_tasks.items():
        if node not in answered:
            problems[task] = "no reply within the round timeout"
    return problems


def _unflatten(arrays: list[np.ndarray], expected: Mapping[str, torch.Tensor]) -> StateDict:
    """SecAgg+'s flat list of arrays as a task vector with the model's names, shapes and dtypes."""
    keys = vector_order(expected)
    if len(arrays) != len(keys):
        raise TaskFailureError("secure aggregation", {"secure aggregation": f"the secure mean has {len(arrays)} "
                                                      f"tensors, the model's task vector {len(keys)}"})
    return {k: torch.from_numpy(np.asarray(a)).to(expected[k].dtype) for k, a in zip(keys, arrays, strict=True)}


def payload_bytes(records: RecordDict) -> int:
    """The serialised size of a message's content (Flower's protobuf), as it travels."""
    return recorddict_to_proto(records).ByteSize()


def content_bytes(msg: Message) -> int:
    """:func:`payload_bytes` of a message's content (0 for an error reply)."""
    return 0 if msg.has_error() else payload_bytes(msg.content)


class RecordingGrid(Grid):
    """A ``Grid`` that forwards everything to ``grid`` and keeps each ``send_and_receive``'s messages and
    replies (the four SecAgg+ stages, in order), to map failures to tasks and count bytes."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.exchanges: list[tuple[list[Message], list[Message]]] = []
        self.sent_bytes = 0

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = list(messages)
        self.sent_bytes += sum(content_bytes(m) for m in sent)
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        self.exchanges.append((sent, replies))
        return replies

    def bytes_up(self, node_tasks: Mapping[int, str]) -> dict[str, int]:
        """Per task, the bytes of its node's replies over all exchanges."""
        sizes = {task: 0 for task in node_tasks.values()}
        for sent, replies in self.exchanges:
            for reply in replies:
                task = node_tasks.get(reply_node(reply, sent))
                if task is not None:
                    sizes[task] += content_bytes(reply)
        return sizes


@dataclass
class _MeanCollector(LegacyStrategy):
    """The legacy strategy :class:`~flwr.server.workflow.SecAggPlusWorkflow` drives: it selects every task
    node and keeps the unmasked mean the workflow hands to ``aggregate_fit``. The workflow asks nothing else
    of it (evaluation is the project's own exchange)."""

    node_tasks: Mapping[int, str]
    grid: Grid
    mean: list[np.ndarray] | None = None
    nodes: list[int] = field(default_factory=list)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None  # the project sends the model itself

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        # the FitIns is replaced by the project's train request (_ProjectSecAggPlus)
        return [(GridClientProxy(node, self.grid, 0), FitIns(parameters, {})) for node in self.node_tasks]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]) -> tuple[Parameters | None, dict]:
        self.nodes = [proxy.node_id for proxy, _ in results]
        if results:  # every result carries the same unmasked mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        return None


class _ProjectSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, with two adaptations at the stage that collects the masked vectors:

    * its content is the project's train request (base weights, instructions, phase), not a legacy ``FitIns``;
    * a node lost before it shared its keys (stages setup, share keys) leaves the round: no other node holds
      shares of its secrets or masked with it. Flower 1.42's unmask stage would still list it as dropped,
      ask the others for its shares (``secaggplus_mod._unmask`` then fails with a ``KeyError``) and remove
      pairwise masks it never added; so the round's nodes and each node's neighbours become the nodes that
      are still active here.
    """

    def __init__(self, requests: Mapping[int, RecordDict], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.requests = dict(requests)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        state.nid_to_fitins = {nid: self.requests[nid] for nid in state.nid_to_fitins}
        state.sampled_node_ids = set(state.active_node_ids)
        state.nid_to_neighbours = {nid: neighbours & state.active_node_ids
                                   for nid, neighbours in state.nid_to_neighbours.items()}
        return super().collect_masked_vectors_stage(grid, context, state)
