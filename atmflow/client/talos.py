"""TaLoS: task-localized sparse fine-tuning (paper 004, Section 4.2, Eq. 7-8, Algorithm 1, A.2).

Only the parameters the model is least sensitive to are fine-tuned, so that task vectors interfere
less when added (and, in a federation, are cheap to send: see :mod:`atmflow.transport`).

Sensitivity (Eq. 7): the diagonal of the Fisher information at the received weights theta_0,

    F_jj = 1/N sum_i E_{y ~ p_theta0(y | x_i)} [d/d theta_j log p_theta0(y | x_i)]^2,

estimated with one label per example sampled from the model's own prediction, squared *per example*
and accumulated (Algorithm 1, lines 6-9), on the client's calibration data (its validation split,
as in A.1).

Mask calibration (Algorithm 1, lines 1-19; A.2): ``R = talos-rounds`` rounds; round ``r`` keeps the
``round(k^(r/R) * m)`` lowest-scoring parameters among those still kept, where ``m`` is the number
of maskable parameters and ``k = 1 - talos-sparsity`` the final kept fraction (paper default
sparsity 0.9: 90% of the maskable parameters are frozen, 10% are fine-tuned). Parameters dropped in
an earlier round are not ranked again (A.2), so after round R exactly ``round(k * m)`` are kept.
Labels are resampled every round (seeded).

Which model each round scores (``talos-calibration``):

* ``soft-masked`` (default; Algorithm 1, lines 7-8, and the authors' code): round ``r`` samples labels
  from and differentiates ``p_{c * theta_0}``, where ``c`` is the mask of round ``r - 1``: kept
  parameters at their value, parameters dropped so far multiplied by :data:`SOFT_MASK` (0.1, the
  authors' ``pruners.py``; A.2: "some positive value close to zero", so that no layer collapses).
  Round 1 scores theta_0 itself (``c = 1``). The rounds then re-score the remaining parameters in the
  model without the ones already dropped, as in Pruning-at-Initialization. Gradients are taken with
  respect to the scored weights ``c * theta_0``; on the kept parameters (the only ones ranked) ``c = 1``,
  so this is Algorithm 1's gradient with respect to theta.
* ``unmasked``: every round scores theta_0 (Eq. 7 read literally): the rounds only re-rank the same
  scores with resampled labels. Kept as a documented variant.

Ties (parameters whose scores are equal at the threshold, e.g. the many exact zeros of parameters
that do not affect the output on the calibration data): the kept ones are drawn at random among the
tied entries (seeded, from the round's generator), never by their position in the model. The authors'
code keeps every entry tied with the threshold (``score <= t``), which can keep far more than the
requested fraction when many scores are exactly 0; here the count is exact.

Maskable parameters (A.2: "Linear, Attention, LayerNorm and Convolutional layers; embedding layers
and final projection layers are kept frozen"), by module type so it holds for any encoder: every
parameter (weight and bias) owned directly by an ``nn.Linear``, ``nn.MultiheadAttention``,
``nn.LayerNorm``, convolution or BatchNorm module. BatchNorm is the convolutional network's
normalisation layer (its affine weight and bias play LayerNorm's role; its running statistics are
buffers and stay frozen anyway). Everything else is frozen: embeddings (``nn.Embedding``), bare
parameters such as CLIP's class token, positional embedding and final ``proj``, and the task heads
(never fine-tuned in atmflow). On MobileNetV2 every encoder parameter is a Conv or BatchNorm one.

The sparse update (Eq. 8): gradients are multiplied by the mask before the optimizer step, and after
the step every frozen entry is put back to its base value, so that the optimizer's own terms (AdamW's
decoupled weight decay touches every parameter it holds) cannot move it: outside the mask the
fine-tuned weights are bit-identical to the base. Tensors with no kept entry do not require a gradient
at all during fine-tuning (the paper's speed-up from structured sparsity, Section 5.3).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from atmflow.data.examples import batch_to

MASKABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.MultiheadAttention, nn.LayerNorm, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
)

PER_EXAMPLE_BUDGET = 2**28  # bytes of per-example gradients held at once during calibration
SOFT_MASK = 0.1  # factor of the parameters dropped so far, in soft-masked calibration (the authors' code)
CALIBRATIONS = ("soft-masked", "unmasked")  # talos-calibration: which model each round scores
Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape (True = fine-tuned)


def maskable_keys(model: nn.Module) -> list[str]:
    """Names of the trainable parameters TaLoS may update (see the module docstring for the rule)."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, MASKABLE_MODULES):
            names += [f"{prefix}.{n}" if prefix else n
                      for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    return names


def kept_count(total: int, sparsity: float, round_: int, rounds: int) -> int:
    """Parameters kept after calibration round ``round_`` of ``rounds``: ``round((1 - sparsity)^(r/R) * m)``."""
    return round((1.0 - sparsity) ** (round_ / rounds) * total)


def fisher_diagonal(model: nn.Module, head: nn.Module, x: torch.Tensor, names: list[str],
                    generator: torch.Generator, device: torch.device,
                    weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Eq. 7 over the examples ``x``, flattened in the order of ``names``: the mean of the squared
    per-example gradients of ``log p(y | x_i)``, one label ``y`` per example sampled from the model's
    own softmax. ``weights`` (by name, for ``names``) replaces those parameters' values in the scored
    model (soft-masked calibration: ``c * theta_0``); default: the model's own. Per-example gradients are
    computed in vectorised chunks (``torch.func.vmap``) of at most :data:`PER_EXAMPLE_BUDGET` bytes."""
    model.to(device).eval()
    head.to(device).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    chosen = {n: (params[n] if weights is None else weights[n].to(device)) for n in names}
    dtype = next(iter(chosen.values())).dtype

    def logits(selected: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        return head(functional_call(model, ({**params, **selected}, buffers), (xs,)))

    def log_likelihood(selected: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return -nn.functional.cross_entropy(logits(selected, xi[None]), yi[None])

    per_example = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    total = torch.zeros(sum(p.numel() for p in chosen.values()), dtype=torch.float64)
    chunk = max(1, PER_EXAMPLE_BUDGET // sum(p.numel() * p.element_size() for p in chosen.values()))
    for i in range(0, len(x), chunk):
        xs = batch_to(x[i : i + chunk], device, dtype)
        with torch.no_grad():
            probs = torch.softmax(logits(chosen, xs).double().cpu(), dim=-1)
        ys = torch.multinomial(probs, 1, generator=generator).reshape(-1).to(device)
        grads = per_example(chosen, xs, ys)
        total += torch.cat([grads[n].square().sum(0).reshape(-1).cpu() for n in names]).double()
    return total / len(x)


def lowest(scores: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """A bool vector marking the ``count`` lowest ``scores``; entries tied with the ``count``-th lowest
    value are drawn at random (``generator``) for the places left, never taken by position."""
    keep = torch.zeros(len(scores), dtype=torch.bool)
    if count == 0:
        return keep
    threshold = torch.kthvalue(scores, count).values
    keep = scores < threshold
    tied = torch.nonzero(scores == threshold).reshape(-1)
    places = count - int(keep.sum())
    if places < len(tied):
        tied = tied[torch.randperm(len(tied), generator=generator)[:places]]
    keep[tied] = True
    return keep


def soft_masked(model: nn.Module, names: list[str], sizes: list[int], active: torch.Tensor) -> dict[str, torch.Tensor]:
    """``c * theta_0`` for ``names``: kept entries (``active``) at their value, the others times :data:`SOFT_MASK`."""
    params = dict(model.named_parameters())
    factors = torch.where(active, 1.0, SOFT_MASK).split(sizes)
    return {n: params[n].detach() * f.reshape(params[n].shape).to(params[n].device, params[n].dtype)
            for n, f in zip(names, factors, strict=True)}


def calibrate_mask(model: nn.Module, head: nn.Module, x: torch.Tensor, *, sparsity: float, rounds: int,
                   seed: int, device: torch.device, calibration: str = "soft-masked") -> Mask:
    """Algorithm 1, lines 1-19: the mask of the least sensitive maskable parameters (True = fine-tuned);
    ``calibration``: which model each round scores (:data:`CALIBRATIONS`, see the module docstring)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"talos-sparsity must be in [0, 1) (the fraction of parameters frozen), got {sparsity}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"talos-calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if len(x) == 0:
        raise ValueError("TaLoS mask calibration needs calibration examples; the validation split is empty "
                         "(increase val-fraction or train-size)")
    names = maskable_keys(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no maskable parameters ({MASKABLE_MODULES})")
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in names]
    total = sum(sizes)
    active = torch.ones(total, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    for r in range(1, rounds + 1):
        weights = soft_masked(model, names, sizes, active) if calibration == "soft-masked" and r > 1 else None
        scores = fisher_diagonal(model, head, x, names, generator, device, weights)
        scores[~active] = float("inf")  # A.2: parameters already frozen are not ranked again
        active = lowest(scores, kept_count(total, sparsity, r, rounds), generator)
    return {n: part.reshape(params[n].shape) for n, part in zip(names, active.split(sizes), strict=True)}


def mask_fraction(mask: Mask) -> float:
    """Fraction of the masked tensors' entries that are fine-tuned."""
    return sum(int(m.sum()) for m in mask.values()) / max(1, sum(m.numel() for m in mask.values()))


class SparseUpdate:
    """Eq. 8 for any optimizer: mask the gradients, then restore the frozen entries after each step.

    On entry, every trainable parameter without a kept entry stops requiring a gradient; :meth:`close`
    gives the original flags back (the caller's task-vector keys depend on them).
    """

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        self._flags: list[tuple[nn.Parameter, bool]] = []
        self._partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for name, p in model.named_parameters():
            self._flags.append((p, p.requires_grad))
            m = mask.get(name)
            if not p.requires_grad:
                continue
            if m is None or not bool(m.any()):
                p.requires_grad_(False)
            elif not bool(m.all()):
                m = m.to(p.device)
                self._partial.append((p, m, p.detach().clone()))

    def mask_gradients(self) -> None:
        for p, m, _ in self._partial:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def restore_frozen(self) -> None:
        for p, m, base in self._partial:
            p.copy_(torch.where(m, p, base))

    def close(self) -> None:
        for p, flag in self._flags:
            p.requires_grad_(flag)
