"""The one entry point of every merge: ``merge(method, base, vectors, ...)``, streamed tensor by tensor.

``base`` and the task vectors are read-only mappings from tensor names to tensors: in-memory state
dicts (what the Flower strategies pass) or lazy views of checkpoint files (``checkpoint_files.py``) that
load one tensor per access. A rule sees one tensor of every task at a time, each task's tensor
loaded when the rule asks for it, so merging ``n`` checkpoints holds the merged model plus a few
tensors (``n`` of them for TIES, which needs every task's trimmed tensor at once), never ``n`` models.

Which tensors are merged: exactly the tensors of the task vectors (the fine-tuned floating-point
tensors; they must exist in the base with the same shape and be floating point). Every other
tensor of the base (integer buffers such as BatchNorm's ``num_batches_tracked``, frozen heads)
is copied from the base unchanged, never averaged. Empty tensors have nothing to merge and are
copied too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from atmflow.merging.registry import make_rule
from atmflow.merging.rule import TaskTensors
from atmflow.merging.task_vectors import StateDict, add_update, check_keys, check_tensor, compute_dtype


class Stream:
    """A ``TaskStream``: every iteration is one pass over the merged tensors, each task's tensor loaded when indexed."""

    def __init__(self, base: StateDict, vectors: Sequence[StateDict],
                 grads: Sequence[StateDict] | None = None) -> None:
        check_keys(base, vectors)
        if grads is not None and len(grads) != len(vectors):
            raise ValueError(f"{len(grads)} gradient state dicts for {len(vectors)} task vectors; one per task needed")
        for j, g in enumerate(grads or ()):
            missing = [k for k in vectors[0] if k not in g]
            if missing:
                raise ValueError(f"gradient {j}: no tensor {missing[0]!r} (gradients must cover every merged tensor)")
        self.base, self.vectors, self.grads = base, vectors, grads
        self.names = [k for k in base if k in vectors[0]]
        self.n_tasks = len(vectors)

    def __iter__(self) -> Iterator[TaskTensors]:
        for name in self.names:
            base = self.base[name]
            if base.numel() == 0:
                continue
            yield TaskTensors(name, Loaded("task vector", self.vectors, name, base),
                              None if self.grads is None else Loaded("gradient", self.grads, name, base))


class Loaded(Sequence[torch.Tensor]):
    """Tensor ``name`` of every source, loaded, checked and cast to the compute dtype when indexed."""

    def __init__(self, what: str, sources: Sequence[StateDict], name: str, base: torch.Tensor) -> None:
        self.what, self.sources, self.name, self.base = what, sources, name, base

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]  # no slices
        tensor = self.sources[i][self.name]
        check_tensor(f"{self.what} {i}", self.name, tensor, self.base)
        return tensor.detach().to(compute_dtype(self.base.dtype))


def merge(method: str, base: StateDict, vectors: Sequence[StateDict], *,
          grads: Sequence[StateDict] | None = None, **params: float) -> dict[str, torch.Tensor]:
    """The merged full state dict: ``theta = theta_0 + update`` with the rule ``method`` (see ``METHODS``).

    ``vectors[t]`` is task t's vector ``tau_t = theta_t - theta_0`` over the merged tensors;
    ``grads[t]`` (TATR only) task t's gradient estimate ``E|grad L_t(theta_0)|`` over the same
    tensors. ``params`` are the method's parameters (``lam``, ``k``, ...; defaults for the others).
    Base tensors without a task vector are copied unchanged. ``ValueError`` names an unknown method
    or parameter, and a tensor that does not fit.
    """
    rule = make_rule(method, params, grads=grads is not None)
    stream = Stream(base, vectors, grads)
    rule.prepare(stream)
    merged = {t.name: add_update(base[t.name], rule.update(t)) for t in stream}
    return {k: merged[k] if k in merged else base[k].clone() for k in base}


def task_arithmetic(base: StateDict, vectors: Sequence[StateDict], lam: float) -> dict[str, torch.Tensor]:
    """Task Arithmetic (Ilharco et al., 2023): ``theta = theta_0 + lambda * sum_t tau_t``."""
    return merge("ta", base, vectors, lam=lam)


def mean_merge(base: StateDict, vectors: Sequence[StateDict], alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """ATM update (paper 000, Eq. 5): ``theta^(k+1) = theta^(k) + alpha / |T| * sum_t tau_t^(k)``.

    An unweighted mean over tasks (not FedAvg's weighting by number of examples).
    """
    return merge("mean", base, vectors, alpha=alpha)

