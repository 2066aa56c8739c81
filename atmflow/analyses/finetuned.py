"""Fine-tuned task vectors from the pretrained encoder, in this process, through the real ClientApp.

For the task-arithmetic analyses (``atmflow negate``, ``atmflow disentanglement``): every task
fine-tunes the pretrained encoder for ``budget-epochs`` with the run's fine-tuning mode (``full`` or
``talos``), with the individual models' instructions (:func:`~atmflow.strategies.plan.individual_instructions`:
a one-shot round 1's data order), so that with the same ``cache-dir`` a TA run's fine-tuning is reused
instead of repeated. The task vectors come back through the transport encoding and are decoded as the
server would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, MessageType

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.client.evaluation import evaluate_task
from atmflow.client.task import local_task
from atmflow.config import RunConfig
from atmflow.models.family import get_family
from atmflow.rounds.exchange import received_task_vector, send_to_tasks
from atmflow.rounds.records import Scores
from atmflow.server.nodes import discover_task_nodes
from atmflow.sim.inprocess import InProcessGrid
from atmflow.strategies.plan import individual_instructions


@dataclass
class LocalEvaluator:
    """An :class:`~atmflow.rounds.exchange.Evaluator` that runs the client's own evaluation
    (:func:`atmflow.client.evaluation.evaluate_task`) in this process, on one encoder, for ``tasks``: an alpha
    sweep is many evaluations, and a message per task and weight setting would cost more than the work."""

    cfg: RunConfig
    tasks: Sequence[str]

    def __call__(self, weights: Mapping[str, torch.Tensor], split: str, phase: str = "") -> Scores:
        encoder = get_family(self.cfg).pretrained_encoder().to(self.cfg.dtype)
        encoder.load_state_dict(dict(weights))
        scores = {}
        for task in self.tasks:
            local = local_task(task, self.cfg)
            scores[task] = evaluate_task(task, encoder, local.head, local.data.split(split), local.device)
        return scores


@dataclass
class TaskVectors:
    """The pretrained weights and one task vector per task."""

    cfg: RunConfig
    pretrained: dict[str, torch.Tensor]
    vectors: dict[str, dict[str, torch.Tensor]]

    def evaluator(self, tasks: Sequence[str]) -> LocalEvaluator:
        return LocalEvaluator(self.cfg, tasks)


def finetuned_task_vectors(cfg: RunConfig) -> TaskVectors:
    """Fine-tune every task from the pretrained encoder (the individual models' instructions and seed)."""
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    pretrained = get_family(cfg).pretrained_encoder().to(cfg.dtype).state_dict()
    instructions = individual_instructions(cfg, evaluate=False)
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.train_request(ArrayRecord(pretrained), instructions),
                            cfg.round_timeout, "fine-tuning").enforce("fail")
    vectors = {task: received_task_vector(reply) for task, reply in sorted(replies.valid.items())}
    return TaskVectors(cfg, pretrained, vectors)
