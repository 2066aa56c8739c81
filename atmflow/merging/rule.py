"""What a merge rule is: declared parameters, optional global statistics, and a per-tensor update.

Every rule merges as ``theta = theta_0 + update(tau_1[name], ..., tau_n[name])``, tensor by tensor.
A rule whose formula needs a statistic of whole task vectors (TIES's per-task top-k threshold,
TATR's quantile of Omega) computes it in ``prepare``, by passes over a ``TaskStream`` that gives
one tensor of every task at a time; then ``update`` only sees one tensor. The tasks' tensors may be
loaded when indexed (from files), so a rule that only sums over tasks, iterating once, holds one
task's tensor at a time whatever the number of tasks. Rules never modify the tensors they are given.

Parameters are dataclass fields declared with ``param(default, meaning, check, allowed, key=...)``:
their names, defaults, meanings, valid ranges and run-config keys are what the run config, the
``atmflow merge`` command and the documentation show. Defining a subclass with a ``name`` registers it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

from atmflow.merging.lazy_torch import torch


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
    """A declared rule parameter.

    ``key`` is its run-config key (``ties-k``); several rules may share one key (TIES and TIES+TATR
    share ``ties-k``) when they declare the same default. The scaling coefficient (``scale``: lambda or
    alpha) has no key of its own: the run config sets it with ``merge-lambda`` or chooses it on
    validation from ``lambda-grid``. A ``seed`` parameter is advanced by one every ATM round, so that a
    random rule draws fresh masks each round.
    """

    name: str
    default: float
    meaning: str
    allowed: str
    key: str = ""
    scale: bool = False
    seed: bool = False
    check: Callable[[float], bool] = field(default=lambda v: True, compare=False, repr=False)

    def is_valid(self, value: object) -> bool:
        """``value`` is a finite number (an integer where the default is one) that passes the check."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if isinstance(self.default, int) and not isinstance(value, int):
            return False
        return bool(self.check(value))


def param(default: float, meaning: str, check: Callable[[float], bool] = lambda v: True,
          allowed: str = "a number", *, key: str = "", scale: bool = False, seed: bool = False) -> Any:
    """Declare a rule parameter (a dataclass field with its meaning, valid range and run-config key)."""
    return field(default=default, metadata={"meaning": meaning, "check": check, "allowed": allowed, "key": key,
                                            "scale": scale, "seed": seed})


def scale(default: float, meaning: str) -> Any:
    """Declare the rule's scaling coefficient (lambda or alpha; set by ``merge-lambda`` / ``lambda-grid``)."""
    return param(default, meaning, scale=True)


RULES: dict[str, type[Rule]] = {}  # name -> rule, filled as rule classes are defined (see the registry)


@dataclass
class Rule(ABC):
    """A merge rule; subclasses are dataclasses whose ``param`` fields are the rule's parameters.

    A subclass that sets ``name`` is registered under it when its class is defined. ``label`` is its
    name in reports and benchmark tables; ``rank`` orders the methods in listings; ``baseline`` says
    whether the benchmarks compare it as a one-shot method; ``uses_grads`` that it takes gradient
    estimates (then the benchmarks also run it zero-shot, without them); ``linear`` that its update is
    a fixed linear combination of the task vectors (so it can weight tasks by examples); ``sums_tasks``
    that its scaling coefficient multiplies a sum over the tasks (Task Arithmetic's form), not a mean.
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""
    rank: ClassVar[int] = 100
    baseline: ClassVar[bool] = True
    uses_grads: ClassVar[bool] = False
    linear: ClassVar[bool] = False
    sums_tasks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in RULES and RULES[cls.name].__qualname__ != cls.__qualname__:
                raise ValueError(f"two merge rules are named {cls.name!r}: {RULES[cls.name]} and {cls}")
            RULES[cls.name] = cls

    def __post_init__(self) -> None:
        for p in self.params():
            value = getattr(self, p.name)
            if not p.is_valid(value):
                raise ValueError(f"{self.name}: {p.name}={value!r} is not allowed ({p.allowed})")

    @classmethod
    def display_name(cls) -> str:
        return cls.label or cls.name.upper()

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The declared parameters, in declaration order."""
        return tuple(Param(f.name, f.default, f.metadata["meaning"], f.metadata["allowed"],
                           f.metadata["key"] or f"{cls.name}-{f.name.replace('_', '-')}", f.metadata["scale"],
                           f.metadata["seed"], f.metadata["check"])
                     for f in fields(cls) if "meaning" in f.metadata)

    @classmethod
    def scale_param(cls) -> str | None:
        """The name of the scaling coefficient (lambda or alpha), if the rule has one."""
        return next((p.name for p in cls.params() if p.scale), None)

    @classmethod
    def mean_scale(cls, n_tasks: int) -> float:
        """The scaling coefficient that makes the update a mean over ``n_tasks`` task vectors with scaling 1
        (paper 000, Sec. 6.1, for every operator inside ATM): ``1 / n`` when the coefficient multiplies a sum
        (``sums_tasks``), else 1."""
        return 1.0 / n_tasks if cls.sums_tasks else 1.0

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
