"""Flower strategies: thin adapters that send the base to every task node and merge the task vectors
with a pure rule from :mod:`atmflow.merging`."""

from atmflow.strategies.atm import ATM
from atmflow.strategies.base import TaskVectorStrategy
from atmflow.strategies.merge_step import MergeStep
from atmflow.strategies.oneshot import OneShot

__all__ = ["ATM", "MergeStep", "OneShot", "TaskVectorStrategy"]
