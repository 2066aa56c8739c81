"""Task-vector geometry: pairwise cosine similarities and norms (paper 000, Section 6, Fig. 9-10).

The papers argue that ATM's task vectors are closer to orthogonal than one-shot task vectors.
Computed tensor by tensor through the Gram matrix ``G_ij = <tau_i, tau_j>`` (summed over tensors),
so no task vector is ever flattened: ``cos_ij = G_ij / sqrt(G_ii * G_jj)``, ``||tau_i|| = sqrt(G_ii)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def gram_matrix(vectors: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """``G_ij = sum over tensors of <tau_i, tau_j>`` in float64."""
    n = len(vectors)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for key in vectors[0]:
        stacked = torch.stack([v[key].reshape(-1).double() for v in vectors])
        gram += stacked @ stacked.T
    return gram


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(torch.float64).tiny)


def task_vector_geometry(vectors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, object]:
    """For ``{task: tau}``: norms, the cosine matrix (nested dict) and the mean |cos| over pairs."""
    tasks = sorted(vectors)
    gram = gram_matrix([vectors[t] for t in tasks])
    cos = cosine_matrix(gram)
    pairs = [abs(float(cos[i, j])) for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
    return {
        "norms": {t: float(gram[i, i].sqrt()) for i, t in enumerate(tasks)},
        "cosine": {a: {b: float(cos[i, j]) for j, b in enumerate(tasks)} for i, a in enumerate(tasks)},
        "mean_abs_cosine": sum(pairs) / len(pairs) if pairs else 0.0,
    }
