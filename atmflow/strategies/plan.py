"""The run plan: what each round sends, which merge it applies and which seeds it uses, built once from
the run config and used by every place that runs rounds (the experiment, the conflict probe, the
task-vector analyses), so that they send the same instructions and share the clients' cache.

Seeds: round ``k`` (1-based; a one-shot run is round 1) of a run with seed ``s`` trains with data
order seed ``round_seed(s, k) = s * 100003 + k``, whatever the strategy, so that round K of a longer
ATM run is exactly a K-round run. Each client derives its own per-task seed from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from atmflow.config import RunConfig, coefficient_grid
from atmflow.merging.registry import rule_params
from atmflow.privacy.budget import epochs_before_individual, uses_dp
from atmflow.privacy.scope import uses_secagg
from atmflow.privacy.secagg import SecAggSettings
from atmflow.protocol import DP_METRICS, FINETUNED_SCORES, TrainInstructions
from atmflow.strategies.merge_step import MergeStep


def round_seed(seed: int, round_: int) -> int:
    """The data-order seed of round ``round_`` of a run with seed ``seed``."""
    return seed * 100_003 + round_


def train_instructions(cfg: RunConfig, *, epochs: int, split: str = "train", evaluate_finetuned: bool = False,
                       tatr_exemplars: int = 0, atm: bool = False) -> TrainInstructions:
    """The config's fine-tuning settings as instructions (seed: the run's; :meth:`RunPlan.round` sets a round's);
    the recipe of an ATM round (``atm``) or of a fine-tuning from the pretrained model (:meth:`RunConfig.recipe`)."""
    recipe = cfg.recipe(atm=atm)
    return TrainInstructions(
        epochs=epochs, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size, full_batch=cfg.full_batch, seed=cfg.seed,
        evaluate_finetuned=evaluate_finetuned, split=split, tatr_exemplars=tatr_exemplars,
        lr_schedule=recipe.lr_schedule, warmup_steps=recipe.warmup_steps, grad_clip=recipe.grad_clip,
    )


def individual_instructions(cfg: RunConfig, *, evaluate: bool = True) -> TrainInstructions:
    """Each task's own model: the pretrained encoder fine-tuned for ``budget-epochs`` with the data order of a
    one-shot round 1 (so that a one-shot run's fine-tuning, cached, serves as the individual models). Under
    ``privacy = "dp"`` it comes after every ATM round in the client's privacy budget."""
    before = epochs_before_individual(cfg) if uses_dp(cfg) and cfg.strategy != "oneshot" else 0
    return dataclasses.replace(train_instructions(cfg, epochs=cfg.budget_epochs, evaluate_finetuned=evaluate),
                               seed=round_seed(cfg.seed, 1), dp_epochs_before=before)


def required_train_metrics(cfg: RunConfig, evaluate_finetuned: bool) -> tuple[str, ...]:
    """The metrics a train reply must carry beyond num-examples and train-loss: the fine-tuned model's test
    scores when asked for, and the privacy accounting under ``privacy = "dp"``."""
    return (*(FINETUNED_SCORES if evaluate_finetuned else ()), *(DP_METRICS if uses_dp(cfg) else ()))


@dataclass(frozen=True)
class RunPlan:
    """What a strategy does each round.

    ``oneshot``: one round of ``budget-epochs``, lambda chosen on validation from ``lambda_grid`` (already
    stretched for TaLoS, :func:`coefficient_grid`) by ``lambda_selection``; otherwise ATM: ``num_rounds``
    rounds of ``epochs-per-round`` epochs (PH-ATM and valFT ATM on the validation split), each merge a
    mean with scaling 1 unless ``merge-lambda`` is set (:class:`MergeStep`, ``mean_step``).
    ``secure``: SecAgg+'s settings when each round's task vectors are securely aggregated (``privacy =
    "secagg"``: the server sees only their mean, :mod:`atmflow.privacy.secagg`), else None.
    """

    oneshot: bool
    num_rounds: int
    instructions: TrainInstructions
    merge_step: MergeStep
    lambda_grid: tuple[float, ...]
    round_timeout: float
    policy: str
    lambda_selection: str = "normalized"
    secure: SecAggSettings | None = None
    required: tuple[str, ...] = ()  # train-reply metrics beyond num-examples and train-loss
    dp_epochs_per_round: int = 0  # privacy = "dp": DP-SGD epochs a client adds to its budget each round

    @classmethod
    def from_config(cls, cfg: RunConfig, *, method: str | None = None, oneshot: bool | None = None) -> RunPlan:
        """The run's plan; ``method="ta", oneshot=True`` gives PH-ATM's starting TA merge (:meth:`ta_start`)."""
        method = method or cfg.merge_method
        oneshot = cfg.strategy == "oneshot" if oneshot is None else oneshot
        # another method than the run's (PH-ATM's TA start) takes the config's values of its own keys only
        params = cfg.operator_params() if method == cfg.merge_method else rule_params(method, cfg.merge_params)
        step = MergeStep(method, params, cfg.aggregation, mean_step=not oneshot)
        exemplars = cfg.tatr_exemplars if step.needs_gradients else 0
        secure = (SecAggSettings(cfg.secagg_clipping_range, cfg.secagg_quantization_range, cfg.secagg_threshold)
                  if uses_secagg(cfg.privacy) else None)
        if oneshot:
            grid = coefficient_grid(cfg.lambda_grid, cfg.finetune, cfg.talos_sparsity)
            normalized = bool(grid) and cfg.lambda_selection == "normalized"  # needs the fine-tuned models' scores
            evaluate = cfg.individual or normalized
            instructions = train_instructions(cfg, epochs=cfg.budget_epochs, tatr_exemplars=exemplars,
                                              evaluate_finetuned=evaluate)
            return cls(True, 1, instructions, step, grid, cfg.round_timeout, cfg.on_missing_task,
                       lambda_selection=cfg.lambda_selection, secure=secure,
                       required=required_train_metrics(cfg, evaluate))
        instructions = train_instructions(cfg, epochs=cfg.epochs_per_round, tatr_exemplars=exemplars,
                                          split=cfg.atm_finetune_split, atm=True)
        dp_epochs = cfg.epochs_per_round if uses_dp(cfg) else 0
        return cls(False, cfg.rounds, instructions, step, (), cfg.round_timeout, cfg.on_missing_task,
                   secure=secure, required=required_train_metrics(cfg, False), dp_epochs_per_round=dp_epochs)

    @classmethod
    def ta_start(cls, cfg: RunConfig) -> RunPlan:
        """PH-ATM's starting model: one-shot Task Arithmetic with lambda chosen on validation (paper 001, Sec. 3)."""
        return cls.from_config(cfg, method="ta", oneshot=True)

    def round(self, round_: int) -> TrainInstructions:
        """The instructions of round ``round_`` (absolute: a resumed run continues the numbering)."""
        return dataclasses.replace(self.instructions, seed=round_seed(self.instructions.seed, round_),
                                   dp_epochs_before=(round_ - 1) * self.dp_epochs_per_round)
