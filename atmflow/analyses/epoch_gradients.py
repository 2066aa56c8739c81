"""Probe ``epoch-gradients`` (paper 000, Section 3, Fig. 3 and 11): where in fine-tuning a task vector is made.

Every task fine-tunes the pretrained encoder for ``budget-epochs`` with the individual models'
instructions (:func:`~atmflow.strategies.plan.individual_instructions`, the client's per-task seed), in
this process with the client's own code (:func:`atmflow.client.training.fine_tune`), reading the
trainable weights after every epoch. From them (:mod:`atmflow.analyses.trajectory`):

* the epoch gradients ``g_k = -(theta^(k) - theta^(k-1))`` (Theorem 3.1: ``eta * grad L`` for full-batch GD);
* the normalized gradient norms ``nabla_k = ||g_k|| / sum_k' ||g_k'||`` (Section 3, Fig. 3a);
* the pairwise cosines ``cos(g_i, g_j)`` (Fig. 3b and 11; a zero vector has cosine 0 with every vector).

Full fine-tuning without differential privacy only: a TaLoS mask or DP-SGD noise would change what the
epoch displacement measures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from atmflow.analyses.trajectory import epoch_gradients, flatten, gram, normalized_norms, norms
from atmflow.client.task import local_task
from atmflow.client.training import fine_tune
from atmflow.config import RunConfig, load_config
from atmflow.models.family import get_family, task_seed
from atmflow.privacy.budget import uses_dp
from atmflow.protocol import TrainInstructions
from atmflow.rounds.geometry import cosine_matrix
from atmflow.strategies.plan import individual_instructions

KIND = "epoch-gradients"


def run_probe(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Per task: the norm, normalized norm and pairwise cosines of the ``budget-epochs`` epoch gradients."""
    cfg = load_config(overrides)
    if cfg.finetune != "full" or uses_dp(cfg):
        raise ValueError(f"the epoch-gradients probe measures plain full fine-tuning; this run has finetune = "
                         f"{cfg.finetune!r} and privacy = {cfg.privacy!r}: set finetune='full' and privacy='none'")
    instructions = individual_instructions(cfg, evaluate=False)
    tasks = {task: _measure(cfg, task, dataclasses.replace(instructions, seed=task_seed(instructions.seed, task)))
             for task in cfg.tasks}  # the client's per-task seed
    return {"kind": KIND, "config": cfg.to_run_config(), "epochs": cfg.budget_epochs, "tasks": tasks}


def _measure(cfg: RunConfig, task: str, instructions: TrainInstructions) -> dict[str, Any]:
    """Fine-tune the pretrained encoder on ``task``, reading the trainable weights after every epoch."""
    local = local_task(task, cfg)
    family = get_family(cfg)
    encoder = family.pretrained_encoder().to(cfg.dtype)
    keys = family.trainable_keys(encoder)
    snapshots = [flatten(encoder.state_dict(), keys)]
    with local.autocast():
        fine_tune(encoder, local.head, local.data.split(instructions.split), instructions, local.device,
                  progress=f"epoch gradients, task {task}",
                  on_epoch=lambda _: snapshots.append(flatten(encoder.state_dict(), keys)))
    g = gram(epoch_gradients(snapshots))  # one pass over the weights serves every measure
    return {"norm": norms(g).tolist(), "normalized-norm": normalized_norms(g),
            "cosine": cosine_matrix(g).clamp(-1, 1).tolist()}
