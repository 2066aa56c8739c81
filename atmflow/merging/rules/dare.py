"""DARE (Yu et al., 2023; a baseline of paper 000): Drop And REscale, then Task Arithmetic.

Per task and tensor, each entry is dropped with probability ``p`` and the kept ones are rescaled by
``1 / (1 - p)``, so that the expectation of the result is ``tau`` (official code yule-BUAA/MergeLM):

    ``theta = theta_0 + lambda * sum_t tau_t * m_t / (1 - p)``,  ``m_t ~ Bernoulli(1 - p)`` entrywise.

Reproducible: the mask of task ``t`` (its position in the list) and tensor ``name`` is drawn from
its own generator, seeded from ``(seed, t, name)``, so it does not depend on the order in which
tensors are merged nor on which other tensors are merged. Defaults ``p = 0.9`` (paper 000),
``lambda = 0.3`` (as Task Arithmetic), ``seed = 0``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from atmflow.merging.lazy_torch import torch
from atmflow.merging.rule import Rule, TaskTensors, param, scale, total


def mask_generator(seed: int, task: int, name: str) -> torch.Generator:
    """The generator of the mask of task ``task``, tensor ``name``."""
    digest = hashlib.blake2b(f"{seed}/{task}/{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def drop_and_rescale(tau: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """``tau * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` entrywise."""
    keep = torch.rand(tau.shape, generator=generator, dtype=tau.dtype) >= p
    return tau * keep / (1.0 - p)


@dataclass
class Dare(Rule):
    """DARE: ``theta = theta_0 + lambda * sum_t tau_t * Bernoulli(1 - p) / (1 - p)``."""

    name = "dare"
    label = "DARE"
    rank = 40
    sums_tasks = True
    p: float = param(0.9, "probability of dropping each entry of a task vector", lambda v: 0.0 <= v < 1.0,
                     "0 <= p < 1", key="dare-p")
    lam: float = scale(0.3, "scaling lambda of the summed rescaled task vectors")
    seed: int = param(0, "seed of the random masks (advanced by one every ATM round)", lambda v: v >= 0,
                      "an integer >= 0", key="merge-seed", seed=True)

    def update(self, t: TaskTensors) -> torch.Tensor:
        return self.lam * total(drop_and_rescale(tau, self.p, mask_generator(self.seed, i, t.name))
                                for i, tau in enumerate(t.taus))
