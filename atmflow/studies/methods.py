"""The methods the studies compare, as run-config overrides, and the runs that produce them.

One-shot methods (paper 000 Section 5, paper 001 Section 4, paper 003): every task fine-tunes the
pretrained encoder for the whole budget once; the task vectors are merged with the method's
operator and lambda is chosen on the validation splits. Runs of one budget and seed share that
fine-tuning through the clients' cache. PA-ATM (paper 001): ``rounds`` iterations of
``epochs-per-round`` epochs from the pretrained model, mean merge with alpha 1; round K of a longer
run is exactly a K-round run (every round's seed depends only on the round). PH-ATM: the TA-merged
model, then ATM rounds on the validation splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atmflow.merging.registry import METHODS, method_names
from atmflow.studies.runner import INDIVIDUAL, PRETRAINED, Pick, RunSpec


def oneshot_methods() -> dict[str, dict[str, Any]]:
    """The one-shot methods the benchmarks compare, from the merge registry: every rule with ``baseline``
    set, by its label; a rule that takes gradient estimates also without them, as "<label> (zero-shot)"
    (paper 003, Eq. 7)."""
    methods: dict[str, dict[str, Any]] = {}
    for name in method_names():
        rule = METHODS[name]
        if rule.baseline:
            methods[rule.display_name()] = {"merge": name}
            if rule.uses_grads:
                methods[f"{rule.display_name()} (zero-shot)"] = {"merge": name, "tatr-exemplars": 0}
    return methods


ONESHOT = oneshot_methods()


def check_methods(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in ONESHOT]
    if unknown:
        raise ValueError(f"unknown one-shot method(s) {unknown}; available: {list(ONESHOT)}")
    return tuple(names)


def bounds(setting: str) -> tuple[Pick, Pick]:
    """The pretrained and individual rows, read from the run that carries them."""
    return Pick(PRETRAINED, setting, PRETRAINED), Pick(INDIVIDUAL, setting, INDIVIDUAL)


def oneshot(method: str, budget: int, seed: int, base: dict[str, Any], setting: str,
            with_bounds: bool = False) -> RunSpec:
    picks = (Pick(method, setting, 1), *(bounds(setting) if with_bounds else ()))
    return RunSpec(seed, {**base, "strategy": "oneshot", "budget-epochs": budget, **ONESHOT[method]}, picks)


def pa_atm(rounds: int, epochs: int, seed: int, base: dict[str, Any], picks: Sequence[Pick],
           budget: int | None = None) -> RunSpec:
    """PA-ATM for ``rounds`` x ``epochs``; the individual upper bound fine-tunes for ``budget`` epochs."""
    return RunSpec(seed, {**base, "strategy": "pa-atm", "rounds": rounds, "epochs-per-round": epochs,
                          "budget-epochs": budget or rounds * epochs}, tuple(picks))


def ph_atm(rounds: int, seed: int, base: dict[str, Any], picks: Sequence[Pick]) -> RunSpec:
    return RunSpec(seed, {**base, "strategy": "ph-atm", "rounds": rounds, "budget-epochs": rounds}, tuple(picks))
