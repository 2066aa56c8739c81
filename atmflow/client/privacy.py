"""A client's side of ``privacy = "dp"``: its DP-SGD budget and the ledger of the epochs it has spent.

The budget (:func:`atmflow.privacy.budget.client_budget`) is computed from the run config and this node's
own training-split size, never taken from the server. It is computed when the node first loads its task,
so that a budget that cannot be met fails the handshake, before any node trains.

The ledger (in the node's ``Context.state``, which lives as long as the run) counts the DP-SGD epochs this
node has taken in the run. A train message says how many epochs the plan had it take before
(``dp-epochs-before``; a resumed run starts with an empty ledger); the client counts whichever is larger,
refuses a fine-tuning that would take it past the planned epochs (the noise was calibrated for those only),
and reports the epsilon spent after each fine-tuning (a fine-tuning reused from the cache counts too: its
result leaves the node again).
"""

from __future__ import annotations

from flwr.app import Context, MetricRecord

from atmflow import protocol
from atmflow.config import RunConfig
from atmflow.data.splits import Split
from atmflow.privacy.budget import DPBudget, PrivacyBudgetError, client_budget, uses_dp

LEDGER = "dp-ledger"  # Context.state record: {"epochs": DP-SGD epochs this node took in the run}
EPOCHS = "epochs"


def node_budget(cfg: RunConfig, train: Split) -> DPBudget | None:
    """This node's DP-SGD budget (None when the run is not private); raises PrivacyBudgetError when unmeetable."""
    return client_budget(cfg, len(train)) if uses_dp(cfg) else None


def spend(context: Context, budget: DPBudget, instructions: protocol.TrainInstructions, task: str) -> int:
    """Book ``instructions.epochs`` DP-SGD epochs before they are taken; returns the epochs spent after them.

    Raises :class:`PrivacyBudgetError` (nothing booked) when they would exceed the planned epochs, or when the
    message asks to fine-tune on another split than the training split the budget was calibrated for."""
    if instructions.split != "train":
        raise PrivacyBudgetError(f"task {task!r}: privacy='dp' fine-tunes on the train split only (its budget is "
                                 f"calibrated for it); the message asks for split {instructions.split!r}")
    ledger = context.state.metric_records.get(LEDGER)
    done = max(instructions.dp_epochs_before, int(ledger[EPOCHS]) if ledger is not None else 0)
    after = done + instructions.epochs
    if after > budget.planned_epochs:
        raise PrivacyBudgetError(
            f"task {task!r}: this fine-tuning would bring the node to {after} epochs of DP-SGD, but its noise was "
            f"calibrated for {budget.planned_epochs} (the run's plan); refusing to train past the privacy budget")
    context.state.metric_records[LEDGER] = MetricRecord({EPOCHS: after})
    return after


def dp_metrics(budget: DPBudget, epochs: int) -> dict[str, float]:
    """The privacy accounting a train reply carries after ``epochs`` epochs of DP-SGD in the run."""
    return {protocol.DP_EPSILON: budget.epsilon_after(epochs), protocol.DP_DELTA: budget.delta,
            protocol.DP_NOISE_MULTIPLIER: budget.noise_multiplier}
