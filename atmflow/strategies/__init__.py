"""Flower strategies: thin adapters that send the base to every task node and merge the task vectors
with a pure rule from :mod:`atmflow.merging`."""

from atmflow.strategies.atm import PAATM
from atmflow.strategies.base import TaskVectorStrategy
from atmflow.strategies.task_arithmetic import TaskArithmetic

__all__ = ["PAATM", "TaskArithmetic", "TaskVectorStrategy"]
