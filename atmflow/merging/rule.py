"""What a merge rule is: declared parameters, optional global statistics, and a per-tensor update.

Every rule merges as ``theta = theta_0 + update(tau_1[name], ..., tau_n[name])``, tensor by tensor.
A rule whose formula needs a statistic of whole task vectors (TIES's per-task top-k threshold,
TATR's quantile of Omega) computes it in ``prepare``, by passes over a ``TaskStream`` that gives
one tensor of every task at a time; then ``update`` only sees one tensor. The tasks' tensors may be
loaded when indexed (from files), so a rule that only sums over tasks, iterating once, holds one
task's tensor at a time whatever the number of tasks. Rules never modify the tensors they are given.

Parameters are dataclass fields declared with ``param(default, meaning, check, allowed)``: their
names, defaults and meanings are what the registry, the CLI and the documentation show.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch


@dataclass(frozen=True)
class TaskTensors:
    """One tensor of every task: ``taus[t]`` is ``tau_t[name]``, ``grads[t]`` task t's gradient estimate.

    Indexing may load the tensor (again, from a file): a rule that sums over tasks iterates once.
    """

    name: str
    taus: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor] | None = None


class TaskStream(Protocol):
    """Iterating gives one ``TaskTensors`` per merged tensor; every iteration is a fresh pass."""

    n_tasks: int

    def __iter__(self) -> Iterator[TaskTensors]: ...


@dataclass(frozen=True)
class Param:
    """A declared rule parameter."""

    name: str
    default: float
    meaning: str
    allowed: str


def param(default: float, meaning: str, check: Callable[[float], bool] = lambda v: True,
          allowed: str = "a number") -> Any:
    """Declare a rule parameter (a dataclass field with its meaning and its valid range)."""
    return field(default=default, metadata={"meaning": meaning, "check": check, "allowed": allowed})


@dataclass
class Rule(ABC):
    """A merge rule; subclasses are dataclasses whose ``param`` fields are the rule's parameters."""

    name: ClassVar[str]
    uses_grads: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if "check" not in f.metadata:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not f.metadata["check"](value):
                raise ValueError(f"{self.name}: {f.name}={value!r} is not allowed ({f.metadata['allowed']})")

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The declared parameters, in declaration order."""
        return tuple(Param(f.name, f.default, f.metadata["meaning"], f.metadata["allowed"])
                     for f in fields(cls) if "meaning" in f.metadata)

    def values(self) -> dict[str, float]:
        """The parameter values in use (defaults filled in)."""
        return {p.name: getattr(self, p.name) for p in self.params()}

    def prepare(self, stream: TaskStream) -> None:  # noqa: B027 (a default: most rules need no statistic)
        """Compute global statistics by passes over ``stream``; none by default."""

    @abstractmethod
    def update(self, t: TaskTensors) -> torch.Tensor:
        """The update of tensor ``t.name``: the merged tensor is ``theta_0[t.name] + update(t)``."""


def total(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_t x_t``, accumulated in task order into a new tensor (one ``x_t`` at a time)."""
    terms = iter(tensors)
    out = next(terms).clone()
    for x in terms:
        out += x
    return out


def unit(v: float) -> bool:
    """``0 <= v <= 1``."""
    return 0.0 <= v <= 1.0
