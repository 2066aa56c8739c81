"""Frozen per-task classification heads.

In the papers the head is CLIP's zero-shot text head: fixed, weak but meaningful. The embedded
benchmark has no text tower, so it offers two frozen heads with the same role:

* ``probe``: multinomial logistic regression fitted on the *pretrained* encoder's features of
  ``probe-shots`` labelled training examples per class (seeded). Deterministic (lbfgs, with
  the BLAS threads pinned: :mod:`atmflow.threads`).
* ``random``: seeded random unit-norm class rows on L2-normalised features, times a temperature
  (no labels used): ``logits = T * normalize(f) @ W^T``.

Heads hold buffers, not parameters: they are never fine-tuned, never sent and never merged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FrozenHead(nn.Module):
    """``logits = scale * g(f) @ W^T + b`` with ``g`` the identity or L2 normalisation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, normalize: bool, scale: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self.normalize = normalize
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = nn.functional.normalize(features, dim=-1)
        return self.scale * features @ self.weight.T + self.bias


def few_shot_indices(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """``shots`` indices per class, drawn without replacement (all of a class if it has fewer)."""
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def probe_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FrozenHead:
    """Fit a logistic-regression probe on given features (lbfgs, L2, C = 1)."""
    from sklearn.linear_model import LogisticRegression

    y = labels.numpy()
    missing = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"probe head needs examples of every class; classes {missing} have none "
                         "in the training split (increase train-size)")
    from atmflow.threads import limited

    clf = LogisticRegression(max_iter=2000)
    with limited():  # scipy's BLAS, loaded with scikit-learn, follows num-threads like torch (lbfgs is then exact)
        clf.fit(features.double().numpy(), y)
    coef, intercept = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
    if num_classes == 2:  # sklearn returns one row: logit(class 1) - logit(class 0)
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    return FrozenHead(coef, intercept, normalize=False, scale=1.0)


def random_head(num_classes: int, dim: int, *, seed: int, temperature: float) -> FrozenHead:
    gen = torch.Generator().manual_seed(seed)
    weight = nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=-1)
    return FrozenHead(weight, torch.zeros(num_classes), normalize=True, scale=temperature)
