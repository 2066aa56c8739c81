"""The merge methods by name, as the strategies, the CLI and the documentation know them."""

from __future__ import annotations

from collections.abc import Mapping

from atmflow.merging.breadcrumbs import Breadcrumbs
from atmflow.merging.dare import Dare
from atmflow.merging.linear import Mean, TaskArithmetic
from atmflow.merging.rule import Rule
from atmflow.merging.tatr import Tatr, TiesTatr
from atmflow.merging.ties import Ties

METHODS: dict[str, type[Rule]] = {
    rule.name: rule for rule in (TaskArithmetic, Mean, Ties, Breadcrumbs, Dare, Tatr, TiesTatr)
}


def make_rule(method: str, params: Mapping[str, float], *, grads: bool = False) -> Rule:
    """The rule ``method`` with ``params`` (defaults for the others); ``ValueError`` naming what is wrong."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; allowed: {', '.join(METHODS)}")
    rule = METHODS[method]
    allowed = [p.name for p in rule.params()]
    for name in params:
        if name not in allowed:
            raise ValueError(f"merge method {method!r} has no parameter {name!r}; its parameters: {', '.join(allowed)}")
    if grads and not rule.uses_grads:
        users = ", ".join(name for name, r in METHODS.items() if r.uses_grads)
        raise ValueError(f"merge method {method!r} does not use gradients (only {users} do)")
    return rule(**params)
