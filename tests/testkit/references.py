"""Independent computations of every merge rule's formula, for checking :mod:`atmflow.merging`.

Written from the formulas in the rules' docstrings, not from their code: task vectors are flattened
into one ``n x d`` matrix (the official TIES / TATR layout), global thresholds come from a full
sort, sums over tasks run in task order. Each reference returns the *update* ``theta - theta_0``
over the task vectors' keys; :func:`merged` adds it to a base.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

State = Mapping[str, torch.Tensor]


def flat(vectors: Sequence[State]) -> torch.Tensor:
    """``n x d``: task ``t``'s tensors, in the key order of the first vector, concatenated."""
    keys = list(vectors[0])
    return torch.stack([torch.cat([v[k].reshape(-1) for k in keys]) for v in vectors])


def unflat(x: torch.Tensor, like: State) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = x[i:i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out


def task_sum(rows: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_t x_t`` in task order."""
    out = rows[0].clone()
    for x in rows[1:]:
        out = out + x
    return out


def ta_reference(vectors: Sequence[State], lam: float) -> dict[str, torch.Tensor]:
    """Task Arithmetic: ``lambda * sum_t tau_t``."""
    return unflat(lam * task_sum(flat(vectors)), vectors[0])


def mean_reference(vectors: Sequence[State], alpha: float) -> dict[str, torch.Tensor]:
    """ATM's step (paper 000, Eq. 5): ``alpha / |T| * sum_t tau_t``."""
    return unflat(alpha / len(vectors) * task_sum(flat(vectors)), vectors[0])


def ties_update(m: torch.Tensor, k: float) -> torch.Tensor:
    """TIES on a flattened ``n x d`` matrix: trim each task to its top ``int(k d)`` magnitudes (ties with
    the threshold kept), elect ``sgn(sum)`` (the model-wide majority where 0), disjoint mean."""
    keep = int(k * m.shape[1])
    kth = m.abs().sort(dim=1, descending=True).values[:, keep - 1:keep]
    trimmed = m * (m.abs() >= kth)
    sign = task_sum(trimmed).sign()
    sign[sign == 0] = sign.sum().sign()
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    return task_sum(trimmed * agree) / task_sum(agree.to(m.dtype)).clamp(min=1)


def ties_reference(vectors: Sequence[State], k: float, lam: float = 1.0) -> dict[str, torch.Tensor]:
    return unflat(lam * ties_update(flat(vectors), k), vectors[0])


def sensitivity_reference(vectors: Sequence[State], grads: Sequence[State] | None) -> torch.Tensor:
    """TATR's Omega (paper 003, Eq. 8) by its double loop: ``sum_{i != j} |g_j| |Delta_i|``, flattened;
    ``|g_j| = |Delta_j|`` without gradients (Eq. 7)."""
    taus = flat(vectors)
    g = taus.abs() if grads is None else flat([{k: gr[k] for k in vectors[0]} for gr in grads]).abs()
    n = len(taus)
    return task_sum([g[j] * taus[i].abs() for i in range(n) for j in range(n) if i != j])


def trust_epsilon(omega: torch.Tensor, fraction: float) -> float:
    """The ``int(fraction * N)``-th largest Omega (Eq. 9), by a full sort; infinity when that is 0."""
    m = int(fraction * omega.numel())
    return float(omega.sort(descending=True).values[m - 1]) if m else float("inf")


def trust_region(omega: torch.Tensor, epsilon: float) -> torch.Tensor:
    return (omega < epsilon) | (omega == 0)


def tatr_reference(vectors: Sequence[State], fraction: float, lam: float = 1.0,
                   grads: Sequence[State] | None = None) -> dict[str, torch.Tensor]:
    """TATR (Eq. 10): ``lambda * sum_k Delta_k * 1[Omega < epsilon]``."""
    omega = sensitivity_reference(vectors, grads)
    mask = trust_region(omega, trust_epsilon(omega, fraction))
    return unflat(lam * task_sum(flat(vectors)) * mask, vectors[0])


def ties_tatr_reference(vectors: Sequence[State], k: float, fraction: float, lam: float = 1.0,
                        grads: Sequence[State] | None = None) -> dict[str, torch.Tensor]:
    """TIES + TATR (Eq. 11): the TIES update masked by TATR's trust region (Omega of the raw vectors)."""
    omega = sensitivity_reference(vectors, grads)
    mask = trust_region(omega, trust_epsilon(omega, fraction))
    return unflat(lam * ties_update(flat(vectors), k) * mask, vectors[0])


def breadcrumbs_reference(vectors: Sequence[State], beta: float, gamma: float, lam: float,
                          per_row: bool = True) -> dict[str, torch.Tensor]:
    """Breadcrumbs: ``lambda * sum_t tau_t * mask_t``; ``per_row``: :func:`official_breadcrumbs_rows`
    (a convolution kernel taken as ``[out, in * kh * kw]``), else ``[q_beta <= |tau_t| <= q_gamma]`` with
    quantiles of ``|tau_t|`` per tensor (numpy's default, linear interpolation)."""
    out = {}
    for key in vectors[0]:
        kept = []
        for v in vectors:
            if per_row:
                x = v[key].reshape(v[key].shape[0], -1) if v[key].dim() > 2 else v[key]
                kept.append(official_breadcrumbs_rows(x, 1 - gamma, gamma - beta).reshape(v[key].shape))
                continue
            magnitude = v[key].abs()
            low, high = np.quantile(magnitude.reshape(-1).numpy(), [beta, gamma])
            kept.append(v[key] * ((magnitude >= float(low)) & (magnitude <= float(high))))
        out[key] = lam * task_sum(kept)
    return out


def official_breadcrumbs_rows(tensor: torch.Tensor, top_k_remove: float, top_k_keep: float) -> torch.Tensor:
    """The official rule (rezazzr/breadcrumbs ``TaskVectorMiddleKeep``, ``remove_first``), restated: along the
    last dimension, zero the ``int(cols * top_k_remove)`` largest ``|x|``, then keep only the
    ``int(cols * top_k_keep)`` largest of what is left; a 0-d tensor is returned as it is. The fractions are
    rounded to 9 decimals first (``1 - 0.8`` must count like 0.2). ``topk`` leaves the order of equal
    magnitudes to the backend (real AdamW task vectors have many: early steps move entries by exactly lr);
    here ties go to the earlier position, as the rule documents."""
    if tensor.dim() == 0:
        return tensor
    cols = tensor.shape[-1]

    def top_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
        idx = x.abs().sort(dim=-1, descending=True, stable=True).indices[..., : int(round(cols * fraction, 9))]
        return torch.zeros(x.shape).scatter_(x.dim() - 1, idx, 1.0)

    removed = tensor * (1 - top_mask(tensor, top_k_remove))
    return removed * top_mask(removed, top_k_keep)


def dare_reference(vectors: Sequence[State], p: float, lam: float, seed: int) -> dict[str, torch.Tensor]:
    """DARE: ``lambda * sum_t tau_t * m_t / (1 - p)``, ``m_t = [U >= p]``, ``U`` uniform from a generator
    seeded by blake2b of ``"{seed}/{t}/{name}"`` (the documented convention of the rule)."""
    out = {}
    for key in vectors[0]:
        kept = []
        for t, v in enumerate(vectors):
            digest = hashlib.blake2b(f"{seed}/{t}/{key}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
            keep = torch.rand(v[key].shape, generator=g, dtype=v[key].dtype) >= p
            kept.append(v[key] * keep / (1.0 - p))
        out[key] = lam * task_sum(kept)
    return out


def merged(base: State, update: State) -> dict[str, torch.Tensor]:
    """``theta_0 + update`` on the updated keys, the base elsewhere."""
    return {k: base[k] + update[k] if k in update else base[k] for k in base}
