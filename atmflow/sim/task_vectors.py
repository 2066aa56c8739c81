"""Fine-tuned task vectors from the pretrained encoder, in this process, through the real ClientApp.

For the task-arithmetic analyses (``atmflow negate``, ``atmflow disentanglement``): every task
fine-tunes the pretrained encoder for ``budget-epochs`` with the run's fine-tuning mode (``full`` or
``talos``), exactly as a one-shot round 1 does (same instructions and seed), so that with the same
``cache-dir`` a TA run's fine-tuning is reused instead of repeated. The task vectors come back
through the transport encoding and are decoded as the server would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, MessageType

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.client.evaluation import evaluate
from atmflow.client.task import local_task
from atmflow.config import RunConfig
from atmflow.models.family import get_family
from atmflow.server.exchange import received_task_vector, send_to_tasks
from atmflow.server.experiment import train_instructions
from atmflow.server.nodes import discover_task_nodes
from atmflow.server.results import Scores
from atmflow.sim.inprocess import InProcessGrid


@dataclass
class TaskVectors:
    """The pretrained weights, one task vector per task, and the in-process grid that made them."""

    cfg: RunConfig
    grid: InProcessGrid
    node_tasks: dict[int, str]
    pretrained: dict[str, torch.Tensor]
    vectors: dict[str, dict[str, torch.Tensor]]

    def evaluate(self, weights: dict[str, torch.Tensor], tasks: list[str], split: str) -> Scores:
        """Accuracy and loss of ``weights`` on ``split`` of each task in ``tasks`` (each with its own head).

        The client's own evaluation (:func:`atmflow.client.evaluation.evaluate`), run here on one
        encoder instead of one message per task and weight setting: an alpha sweep is many of them."""
        encoder = get_family(self.cfg).pretrained_encoder().to(self.cfg.dtype)
        encoder.load_state_dict(weights)
        scores = {}
        for task in tasks:
            local = local_task(task, self.cfg)
            accuracy, loss = evaluate(encoder, local.head, local.data.split(split), local.device)
            scores[task] = {"accuracy": accuracy, "loss": loss}
        return scores


def finetuned_task_vectors(cfg: RunConfig) -> TaskVectors:
    """Fine-tune every task from the pretrained encoder (one-shot round 1's instructions and seed)."""
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    pretrained = get_family(cfg).pretrained_encoder().to(cfg.dtype).state_dict()
    how = dataclasses.replace(train_instructions(cfg, epochs=cfg.budget_epochs),
                              seed=cfg.seed * 100_003 + 1)  # the seed of a one-shot round 1
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.content(arrays=ArrayRecord(pretrained), config=how.to_record()),
                            cfg.round_timeout, "fine-tuning").enforce("fail")
    vectors = {task: received_task_vector(reply) for task, reply in sorted(replies.valid.items())}
    return TaskVectors(cfg, grid, node_tasks, pretrained, vectors)
