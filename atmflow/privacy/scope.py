"""Which runs the ``privacy`` modes allow (checked when the run config is validated, before any work).

Under secure aggregation the server learns only the sum of a round's task vectors (SecAgg+, Bell et al.
2020), so only merges that depend on the task vectors through their sum can run: Task Arithmetic
(``theta_0 + lambda * sum_t tau_t``) and ATM's mean step (``theta + alpha / |T| * sum_t tau_t``, paper 000,
Eq. 5), both unweighted (:mod:`atmflow.merging.rules.linear`). TIES, Breadcrumbs, DARE and TATR look at
single task vectors (signs, magnitudes, random drops, per-task gradients) and cannot.
"""

from __future__ import annotations

from atmflow.merging.registry import METHODS, get_rule

SECURE_MODES = ("secagg", "secagg+dp")  # the privacy modes that aggregate with SecAgg+
MODULUS_RANGE = 2**32  # SecAgg+'s masks and sums live modulo this (Flower's default and its maximum)


def uses_secagg(privacy: str) -> bool:
    """Whether the ``privacy`` mode aggregates task vectors with SecAgg+ (no vector leaves a node unmasked)."""
    return privacy in SECURE_MODES


def secagg_problem(method: str, aggregation: str, num_tasks: int, quantization_range: int) -> str | None:
    """Why a run with merge ``method`` and ``aggregation`` over ``num_tasks`` tasks cannot run on a secure sum,
    or None. The sum of the quantized vectors must stay below the modulus: ``num_tasks * Q < 2**32``."""
    if not get_rule(method).linear:
        linear = ", ".join(name for name, rule in METHODS.items() if rule.linear)
        return (f"privacy='secagg' gives the server only the sum of the task vectors, but merge={method!r} needs "
                f"each task's vector on its own (signs, magnitudes, drops or per-task gradients); choose a merge "
                f"that works on the sum ({linear}) or set privacy='none'")
    if aggregation != "uniform":
        return ("privacy='secagg' sums the task vectors with equal weights; aggregation='examples' would need "
                "each node's weight inside the masked sum, which this build does not do; use "
                "aggregation='uniform' or privacy='none'")
    if num_tasks * quantization_range >= MODULUS_RANGE:
        return (f"secagg-quantization-range={quantization_range} is too large for {num_tasks} tasks: the sum of "
                f"the quantized task vectors would wrap around 2**32; use at most {(MODULUS_RANGE - 1) // num_tasks}")
    return None
