"""The merge methods by name: every rule module of :mod:`atmflow.merging.rules`, imported here.

This is the one source of the method names, their parameters, defaults, valid ranges and run-config
keys: the run config (:mod:`atmflow.config`), ATM's merge step, the ``atmflow merge`` command and the
benchmarks read them from here. Reading the registry does not import torch (see
:mod:`atmflow.merging.lazy_torch`), so that validating a config stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Mapping

from atmflow.merging import rules
from atmflow.merging.rule import RULES, Param, Rule

for _module in pkgutil.iter_modules(rules.__path__):
    importlib.import_module(f"{rules.__name__}.{_module.name}")

METHODS: Mapping[str, type[Rule]] = RULES  # live: a rule defined later (a plug-in, a test) appears too


def method_names() -> list[str]:
    """Every method name, in listing order (``rank``, then name)."""
    return sorted(METHODS, key=lambda name: (METHODS[name].rank, name))


def unknown_method_message(method: str) -> str:
    close = difflib.get_close_matches(method, method_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown merge method {method!r}{hint}; allowed: {', '.join(method_names())}"


def get_rule(method: str) -> type[Rule]:
    if method not in METHODS:
        raise ValueError(unknown_method_message(method))
    return METHODS[method]


def config_params() -> dict[str, Param]:
    """Every run-config key of a rule parameter (scaling coefficients excepted: ``merge-lambda`` sets
    them), with its declaration. Rules that share a key must declare the same default."""
    keys: dict[str, Param] = {}
    for name in method_names():
        for p in METHODS[name].params():
            if p.scale:
                continue
            if p.key in keys and keys[p.key].default != p.default:
                raise ValueError(f"merge parameter key {p.key!r} is declared with defaults {keys[p.key].default} "
                                 f"and {p.default} ({name}); rules that share a key must agree")
            keys.setdefault(p.key, p)
    return keys


def rule_params(method: str, settings: Mapping[str, float | int], scale: float | None = None) -> dict[str, float | int]:
    """The parameters of ``method`` from run-config ``settings`` (``{key: value}``, see
    :func:`config_params`); the scaling coefficient only when ``scale`` is given (else the rule's default)."""
    params: dict[str, float | int] = {}
    for p in get_rule(method).params():
        if p.scale:
            if scale is not None:
                params[p.name] = scale
        else:
            params[p.name] = settings.get(p.key, p.default)
    return params


def make_rule(method: str, params: Mapping[str, float], *, grads: bool = False) -> Rule:
    """The rule ``method`` with ``params`` (defaults for the others); ``ValueError`` naming what is wrong."""
    rule = get_rule(method)
    allowed = [p.name for p in rule.params()]
    for name in params:
        if name not in allowed:
            raise ValueError(f"merge method {method!r} has no parameter {name!r}; its parameters: {', '.join(allowed)}")
    if grads and not rule.uses_grads:
        users = ", ".join(name for name, r in METHODS.items() if r.uses_grads)
        raise ValueError(f"merge method {method!r} does not use gradients (only {users} do)")
    return rule(**params)
