"""Differential-privacy budget of one client: how many DP-SGD steps it takes in a run, the noise multiplier
that keeps the whole run within ``(dp-epsilon, dp-delta)``, and the epsilon spent after each fine-tuning.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1): every step draws a
Poisson sample of the client's training split (each example with probability ``q = batch-size / n``),
clips each example's gradient to L2 norm ``C = dp-max-grad-norm`` and adds Gaussian noise
``N(0, sigma^2 C^2 I)`` to their sum. The privacy loss of ``T`` such steps is composed with the Renyi-DP
accountant (Mironov 2017; Opacus's ``RDPAccountant``): ``epsilon(sigma, q, T, delta)``.

Every optimizer step a client takes in the run is counted (:func:`planned_epochs`): a one-shot run
fine-tunes once (``budget-epochs``; its individual models are those same fine-tunings); an ATM run
fine-tunes ``rounds x epochs-per-round`` epochs, composed over all rounds, plus ``budget-epochs`` for the
individual upper bound when ``individual = true`` (its task vector and scores leave the client too). With
``dp-epsilon`` the noise multiplier is calibrated once, for the whole plan (Opacus's
``get_noise_multiplier``); with ``dp-noise-multiplier`` it is given and epsilon follows.

:func:`check_privacy_settings` is the run config's check of these keys; Opacus is imported only inside the
functions that compute, so that validating a config stays fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from atmflow.merging.registry import get_rule

MAX_NOISE_MULTIPLIER = 2000.0  # a larger noise multiplier drowns any gradient: such a budget is refused


class PrivacyBudgetError(ValueError):
    """The requested (epsilon, delta) cannot be met by this plan, or a fine-tuning would exceed it."""


def uses_dp(cfg: Any) -> bool:
    """Whether the run trains with DP-SGD (``privacy = "dp"`` or ``"secagg+dp"``)."""
    return cfg.privacy in ("dp", "secagg+dp")


def planned_epochs(cfg: Any) -> int:
    """Epochs of DP fine-tuning one client does in the whole run (see the module docstring)."""
    if cfg.strategy == "oneshot":
        return cfg.budget_epochs
    return cfg.rounds * cfg.epochs_per_round + (cfg.budget_epochs if cfg.individual else 0)


def epochs_before_individual(cfg: Any) -> int:
    """Epochs of DP fine-tuning before an ATM run's individual fine-tuning (which comes after every round)."""
    return cfg.rounds * cfg.epochs_per_round


@dataclass(frozen=True)
class DPBudget:
    """One client's DP-SGD settings for the whole run: noise multiplier ``sigma``, Poisson rate ``q``,
    steps per epoch, ``delta`` and the epochs the plan allows."""

    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    delta: float
    max_grad_norm: float
    planned_epochs: int

    def epsilon_after(self, epochs: int) -> float:
        """Epsilon spent after ``epochs`` epochs of DP-SGD (RDP accountant, at this budget's delta)."""
        return epsilon(self.noise_multiplier, self.sample_rate, epochs * self.steps_per_epoch, self.delta)

    @property
    def planned_steps(self) -> int:
        return self.planned_epochs * self.steps_per_epoch


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """``epsilon`` of ``steps`` Poisson-sampled Gaussian steps (Opacus's RDP accountant); 0 for no step."""
    from opacus.accountants import RDPAccountant  # imported here so that validating a config stays fast

    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # at huge noise the best Renyi order is Opacus's largest: a looser bound
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # Opacus's RDP-to-DP conversion (Balle et al. 2020) can fall below 0 at huge noise; (eps, delta)-DP for a
        # negative eps implies (0, delta)-DP
        return max(0.0, float(accountant.get_epsilon(delta=delta)))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """DP-SGD steps in one epoch: ``ceil(n / batch-size)``, i.e. about ``1 / q`` Poisson-sampled batches."""
    return math.ceil(num_examples / batch_size)


def client_budget(cfg: Any, num_examples: int) -> DPBudget:
    """The DP-SGD budget of a client with ``num_examples`` training examples under run config ``cfg``.

    Raises :class:`PrivacyBudgetError` when ``dp-epsilon`` cannot be met at any noise multiplier up to
    :data:`MAX_NOISE_MULTIPLIER`, naming the smallest epsilon this plan can reach and how to lower it.
    """
    q = min(1.0, cfg.batch_size / num_examples)
    per_epoch = steps_per_epoch(num_examples, cfg.batch_size)
    delta = cfg.dp_delta or 1.0 / num_examples
    epochs = planned_epochs(cfg)
    sigma = cfg.dp_noise_multiplier or calibrate(cfg.dp_epsilon, delta, q, epochs * per_epoch)
    return DPBudget(sigma, q, per_epoch, delta, cfg.dp_max_grad_norm, epochs)


@lru_cache(maxsize=64)
def calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (within Opacus's 0.01 tolerance on epsilon) whose ``steps`` steps at
    rate ``sample_rate`` spend at most ``target_epsilon`` (Opacus's ``get_noise_multiplier``, RDP).

    Refused when even noise multiplier :data:`MAX_NOISE_MULTIPLIER` spends more: the RDP accountant's bound
    has a floor, ``log(1/delta) / (alpha_max - 1)`` with Opacus's largest Renyi order ``alpha_max = 63``,
    which a small delta raises above a small epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    floor = epsilon(MAX_NOISE_MULTIPLIER, sample_rate, steps, delta)
    if target_epsilon <= floor:
        raise PrivacyBudgetError(
            f"dp-epsilon={target_epsilon:g} cannot be met: {steps} DP-SGD steps at sampling rate {sample_rate:.4g} "
            f"(delta={delta:.3g}) spend at least epsilon={floor:.3g} even with noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g} (the RDP accountant's floor, about log(1/delta) / 62). Set dp-epsilon above "
            f"{floor:.3g} or a larger dp-delta; fewer steps (fewer rounds, epochs-per-round or budget-epochs, "
            "individual=false, a larger batch-size) lower the floor a little")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp"))


def check_privacy_settings(cfg: Any) -> None:
    """Run-config checks of the ``privacy`` and ``dp-*`` keys (called by :class:`atmflow.config.RunConfig`);
    raises ``ValueError`` naming the keys and what to change."""
    given = [k for k, v in (("dp-epsilon", cfg.dp_epsilon), ("dp-noise-multiplier", cfg.dp_noise_multiplier)) if v]
    if not uses_dp(cfg):
        if given or cfg.dp_delta:
            raise ValueError(f"{', '.join(given) or 'dp-delta'} is set but privacy={cfg.privacy!r}; "
                             "set privacy='dp' to train with differential privacy")
        return
    if len(given) != 1:
        raise ValueError("privacy='dp' needs exactly one of dp-epsilon (the budget; the noise is calibrated to it) "
                         f"and dp-noise-multiplier (the noise; epsilon follows); got {given or 'neither'}")
    refused = {
        # the accountant counts steps over the train split; PH-ATM and valFT-ATM fine-tune on validation
        "fine-tuning on the validation split (strategy PH-ATM or valFT-ATM, atm-split = 'validation')":
            cfg.strategy != "oneshot" and cfg.atm_finetune_split == "validation",
        "full-batch = true": cfg.full_batch,
        "finetune = 'talos' (its mask is calibrated on the client's data outside the DP-SGD steps)":
            cfg.finetune == "talos",
        f"tatr-exemplars > 0 with merge {cfg.merge_method!r} (the mean gradient over exemplars is not "
        "privatised; set tatr-exemplars = 0 for zero-shot TATR)":
            get_rule(cfg.merge_method).uses_grads and cfg.tatr_exemplars > 0,
    }
    bad = [what for what, yes in refused.items() if yes]
    if bad:
        raise ValueError(f"privacy='dp' is not available with {'; '.join(bad)} (docs/privacy.md)")
