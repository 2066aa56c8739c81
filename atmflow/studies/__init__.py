"""Named studies: one command runs a paper's grid, resumes when interrupted, and writes its tables and figures.

``python -m atmflow.studies <name> [--seeds 0 1 2] [--root outputs/studies] [--run-config "..."]
[--options "..."]``; see :mod:`atmflow.studies.__main__` and docs/results.md.
"""

from __future__ import annotations

from atmflow.studies import (
    base_trajectory,
    budget,
    budget_distribution,
    conflict,
    epoch_gradients,
    original_settings,
    orthogonality,
    privacy,
    talos,
)
from atmflow.studies.study import Outcome, Study, run_study

STUDIES: dict[str, Study] = {s.name: s for s in (budget_distribution.STUDY, budget.STUDY, original_settings.STUDY,
                                                 orthogonality.STUDY, conflict.STUDY, talos.STUDY,
                                                 privacy.STUDY, epoch_gradients.STUDY, base_trajectory.STUDY)}

__all__ = ["STUDIES", "Outcome", "Study", "run_study"]
