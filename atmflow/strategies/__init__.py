"""Flower strategies: thin adapters that send the base to every task node and merge the task vectors
with a pure rule from :mod:`atmflow.merging`, as a :class:`RunPlan` says."""

from atmflow.strategies.atm import ATM
from atmflow.strategies.base import TaskVectorStrategy
from atmflow.strategies.build import build_strategy
from atmflow.strategies.merge_step import MergeStep
from atmflow.strategies.oneshot import OneShot
from atmflow.strategies.plan import RunPlan, round_seed

__all__ = ["ATM", "MergeStep", "OneShot", "RunPlan", "TaskVectorStrategy", "build_strategy", "round_seed"]
