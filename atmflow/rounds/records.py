"""What one round measured: per-task scores, task-vector geometry, bytes and wall time.

Normalized accuracy (paper 004, Eq. 11; Ilharco et al.): per task, merged accuracy divided by the
task's individually fine-tuned accuracy, averaged over tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Scores = dict[str, dict[str, float]]  # task -> {"accuracy": .., "loss": ..}


def avg_accuracy(scores: Scores) -> float:
    return sum(s["accuracy"] for s in scores.values()) / len(scores)


def normalized_accuracy(scores: Scores, individual: Scores) -> float:
    """Mean over tasks (those scored in both) of merged accuracy / individual accuracy.

    A task whose individual model scores 0 has no normalized accuracy and is left out; NaN when no task
    is left (the report then shows "nan" rather than a made-up number)."""
    common = [t for t in scores if t in individual and individual[t]["accuracy"] > 0]
    if not common:
        return float("nan")
    return sum(scores[t]["accuracy"] / individual[t]["accuracy"] for t in common) / len(common)


@dataclass
class RoundRecord:
    """One server round: the merged model's per-task test scores and what the round cost.

    ``geometry`` holds the task vectors' norms, pairwise cosine matrix and mean |cosine|;
    ``missing`` the tasks left out of this round's merge and why (``on-missing-task = "skip"``).
    """

    round: int
    tasks: Scores
    avg_accuracy: float
    wall_s: float
    bytes_up: int
    bytes_up_per_task: dict[str, int]
    train: dict[str, dict[str, float]]
    geometry: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
