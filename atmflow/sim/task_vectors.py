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
from atmflow.config import RunConfig
from atmflow.models.encoder import pretrained_encoder
from atmflow.server.exchange import evaluate_on_tasks, received_task_vector, send_to_tasks
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
        """Accuracy and loss of ``weights`` on ``split`` of each task in ``tasks`` (each with its own head)."""
        nodes = {n: t for n, t in self.node_tasks.items() if t in tasks}
        return evaluate_on_tasks(self.grid, nodes, ArrayRecord(weights), split, self.cfg.round_timeout,
                                 f"{split} evaluation")


def finetuned_task_vectors(cfg: RunConfig) -> TaskVectors:
    """Fine-tune every task from the pretrained encoder (one-shot round 1's instructions and seed)."""
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=len(cfg.tasks))
    node_tasks = discover_task_nodes(grid, cfg.tasks, cfg.node_wait_s, cfg.round_timeout)
    pretrained = pretrained_encoder().to(cfg.dtype).state_dict()
    how = dataclasses.replace(train_instructions(cfg, epochs=cfg.budget_epochs),
                              seed=cfg.seed * 100_003 + 1)  # the seed of a one-shot round 1
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN,
                            lambda _: protocol.content(arrays=ArrayRecord(pretrained), config=how.to_record()),
                            cfg.round_timeout, "fine-tuning").enforce("fail")
    vectors = {task: received_task_vector(reply) for task, reply in sorted(replies.valid.items())}
    return TaskVectors(cfg, grid, node_tasks, pretrained, vectors)
