"""Merge rules as pure functions over state dicts (``dict[str, torch.Tensor]``); no Flower here.

A *task vector* (Ilharco et al., 2023) is ``tau_t = theta_t - theta_base``: the fine-tuned weights
minus the weights the fine-tuning started from. It covers only the tensors that are fine-tuned;
every other tensor of the base (e.g. frozen BatchNorm statistics) passes through a merge unchanged.
"""

from atmflow.merging.linear import mean_merge, task_arithmetic
from atmflow.merging.task_vectors import add_scaled, check_compatible, task_vector

__all__ = ["add_scaled", "check_compatible", "mean_merge", "task_arithmetic", "task_vector"]
