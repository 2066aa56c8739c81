"""Gradient-magnitude estimate for TATR (paper 003, Eq. 6).

``g_t = E_{(x, y) in exemplars} |grad_theta L_t(theta; x, y)|``: the mean over exemplars of the
absolute *per-example* gradient, at the weights the client received (theta_pre), over the tensors
that are fine-tuned. The exemplars are ``n`` examples of the training split drawn with a seed.
"""

from __future__ import annotations

import torch
from torch import nn

from atmflow.data.examples import batch_to
from atmflow.data.splits import Split


def mean_abs_gradient(encoder: nn.Module, head: nn.Module, split: Split, n: int, seed: int,
                      device: torch.device) -> dict[str, torch.Tensor]:
    encoder.to(device).train()  # BatchNorm statistics stay frozen (see atmflow.models.mobilenet)
    head.to(device).eval()
    named = [(k, p) for k, p in encoder.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    dtype = named[0][1].dtype
    for i in idx.tolist():
        loss = nn.functional.cross_entropy(head(encoder(batch_to(split.x[i : i + 1], device, dtype))),
                                           split.y[i : i + 1].to(device))
        for (k, _), g in zip(named, torch.autograd.grad(loss, [p for _, p in named]), strict=True):
            total[k] += g.abs()
    return {k: (v / len(idx)).cpu() for k, v in total.items()}
