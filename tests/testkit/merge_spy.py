"""A spy on the strategies' merge step (fixture ``merge_calls`` of ``tests/conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class MergeCall:
    """One call of ``MergeStep.apply`` during a run: the step's method and parameters, the round, copies of
    its inputs (base, task vectors and gradient estimates by task) and the model it returned."""

    method: str
    params: dict[str, float | int]
    round: int
    base: dict[str, Any]
    vectors: dict[str, dict[str, Any]]
    grads: dict[str, dict[str, Any]] | None
    merged: dict[str, Any]

    def task_vectors(self) -> list[dict[str, Any]]:
        """The task vectors in task-name order (the order the merge step hands them to the rule)."""
        return [self.vectors[t] for t in sorted(self.vectors)]

    def task_grads(self) -> list[dict[str, Any]] | None:
        return None if not self.grads else [self.grads[t] for t in sorted(self.grads)]



def spy_on_merge_step(monkeypatch: pytest.MonkeyPatch) -> list[MergeCall]:
    """Record every ``MergeStep.apply`` from now on (until ``monkeypatch`` undoes it), in call order."""
    from atmflow.strategies.merge_step import MergeStep

    calls: list[MergeCall] = []
    original = MergeStep.apply

    def copy(state: Any) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in state.items()}

    def spy(self: MergeStep, base: Any, vectors: Any, num_examples: Any, grads: Any = None, scale: Any = None,
            round_: int = 1) -> Any:
        result = original(self, base, vectors, num_examples, grads, scale, round_)
        calls.append(MergeCall(self.method, dict(self.params), round_, copy(base),
                               {t: copy(v) for t, v in vectors.items()},
                               {t: copy(g) for t, g in grads.items()} if grads else None, copy(result)))
        return result

    monkeypatch.setattr(MergeStep, "apply", spy)
    return calls
