"""Geometry of a sequence of parameter vectors (paper 000, Fig. 3, 8 and 11), as pure functions.

Everything goes through the Gram matrix ``G_ij = <x_i, x_j>`` of ``N`` flat vectors of one length ``D``
(:func:`gram`: ``N x N``, accumulated in float64 over chunks of the ``D`` coordinates, so that ``N``
ViT-size vectors never need a float64 copy or an ``N x D`` decomposition); the norms, normalized norms
and PCA are read from it, the cosines with :func:`atmflow.rounds.geometry.cosine_matrix`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

CHUNK = 1 << 22  # coordinates per float64 block of the Gram accumulation


def flatten(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """The tensors ``keys`` of ``state`` as one float32 CPU vector, in the order of ``keys``."""
    return torch.cat([state[k].detach().reshape(-1).to("cpu", torch.float32) for k in keys])


def gram(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``G_ij = <x_i, x_j>`` of the vectors (float64, ``N x N``)."""
    if not vectors:
        raise ValueError("gram: no vectors")
    length = vectors[0].numel()
    if any(v.numel() != length for v in vectors):
        raise ValueError(f"gram: vectors of different lengths {sorted({v.numel() for v in vectors})}")
    out = torch.zeros(len(vectors), len(vectors), dtype=torch.float64)
    for start in range(0, length, CHUNK):
        block = torch.stack([v[start : start + CHUNK].to(torch.float64) for v in vectors])
        out += block @ block.T
    return out


def epoch_gradients(snapshots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of each epoch from the weights after every epoch ``theta^(0..K)`` (``theta^(0)``: the start):
    ``g_k = -(theta^(k) - theta^(k-1))``, k = 1..K.

    Paper 000, Theorem 3.1: one epoch of full-batch gradient descent with learning rate eta moves the weights
    by ``-eta * grad L(theta^(k-1))``, so ``g_k = eta * grad L(theta^(k-1))``; with mini-batches (the papers'
    fine-tuning) it is eta times the sum of the epoch's mini-batch gradients. Norms relative to each other
    and cosines (what Fig. 3 and 11 show) do not depend on a learning rate that is the same in every epoch.
    """
    if len(snapshots) < 2:
        raise ValueError(f"epoch gradients need the weights before and after at least one epoch; got "
                         f"{len(snapshots)} snapshot(s)")
    return [before - after for before, after in zip(snapshots[:-1], snapshots[1:], strict=True)]


def norms(g: torch.Tensor) -> torch.Tensor:
    """``||x_i|| = sqrt(G_ii)`` from the Gram matrix ``g``."""
    return g.diagonal().clamp(min=0).sqrt()


def normalized_norms(g: torch.Tensor) -> list[float]:
    """Paper 000, Section 3 (Fig. 3a): ``nabla_k = ||g_k|| / sum_{k'=1..K} ||g_k'||`` from the Gram matrix ``g``
    of the epoch gradients; they sum to 1."""
    lengths = norms(g)
    total = float(lengths.sum())
    if total == 0:
        raise ValueError("normalized norms: every vector is zero (the weights never moved)")
    return [float(n) / total for n in lengths]


def pca_2d(points: Sequence[torch.Tensor]) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Projection of the points on their first two principal components (paper 000, Fig. 8): the PCA is fitted
    on exactly these points.

    With ``C`` the points centred on their mean, ``C C^T = U diag(lambda) U^T`` (the centred Gram matrix
    ``J G J``, ``J = I - 11^T / N``); the coordinates on component c are ``U_c * sqrt(lambda_c)`` (= ``C v_c``
    for the unit principal direction ``v_c``), and its share of the variance ``lambda_c / sum(lambda)``.
    Each component's sign puts the first point (the pretrained model) at a coordinate <= 0. Returns
    ``([(pc1, pc2) per point], (share of pc1, share of pc2))``.
    """
    n = len(points)
    if n < 2:
        raise ValueError(f"PCA needs at least two points; got {n}")
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    centred = centre @ gram(points) @ centre
    values, vectors = torch.linalg.eigh((centred + centred.T) / 2)  # ascending
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    total = float(values.sum())
    if total == 0:
        raise ValueError("PCA: all points are equal")
    if n == 2:  # one direction only: the second component is zero
        values, vectors = torch.cat([values, values.new_zeros(1)]), torch.cat([vectors, vectors.new_zeros(n, 1)], 1)
    coords = vectors[:, :2] * values[:2].sqrt()
    coords = coords * torch.where(coords[0] > 0, -1.0, 1.0)
    return [(float(x), float(y)) for x, y in coords.tolist()], (float(values[0]) / total, float(values[1]) / total)
