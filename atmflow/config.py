"""Run configuration: one validated pydantic model for the whole run.

The Flower run config (``[tool.flwr.app.config]`` in ``pyproject.toml`` plus ``--run-config``
overrides) is a flat mapping with kebab-case keys. :func:`load_config` turns it into a
:class:`RunConfig` before any work starts; an unknown key or a bad value raises
:class:`ConfigError` naming the key and what is allowed.

Nothing in a config is trusted: every float key must be finite (``inf`` / ``nan`` are refused, naming
the key), a value of the wrong type is a ConfigError naming its key (never a raw ``TypeError``),
``run-name`` is a plain folder name (no path separators, not ``.`` or ``..``: results stay inside
``output-dir``), and ``tatr-exemplars`` is 0 (zero-shot) or at least :data:`MIN_TATR_EXEMPLARS`
(the mean gradient over a few examples reveals them; docs/config.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    import torch

from atmflow.data.embedded import DEFAULT_FASHION_MNIST_DIR
from atmflow.data.own_tasks import TaskFileError
from atmflow.data.tasks import VAL_MAX, own_task_specs, parse_data_sources, task_spec
from atmflow.data.text_tasks import TEXT_SMALL
from atmflow.merging.registry import METHODS, config_params, get_rule, make_rule, rule_params, unknown_method_message
from atmflow.models.registry import Recipe, family_entry
from atmflow.privacy.budget import check_privacy_settings
from atmflow.privacy.scope import secagg_problem, uses_secagg


def _kebab(name: str) -> str:
    return name.replace("_", "-")


MIN_TATR_EXEMPLARS = 16  # tatr-exemplars: 0 (zero-shot) or at least this many (privacy floor, docs/config.md)


def _float_list(value: Any) -> tuple[float, ...]:
    """Accept "0.1,0.2", a list, or an empty string (no grid); every entry a finite number."""
    if isinstance(value, str):
        items: list[Any] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("expected comma-separated numbers such as \"0.1,0.5\"")
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"every number must be finite, got {value!r}")
    return numbers


def setting(default: Any = ..., *, client: bool = False, outcome: bool = True, resumable: bool = False,
            **constraints: Any) -> Any:
    """A config field with its roles (read by :func:`keys_with_role`; a new key states them here, once):

    - ``client``: changes what a client computes from a given message (data, head, seeds, model), so it
      is part of the client cache's key (:mod:`atmflow.client.cache`);
    - ``outcome``: may change a run's results; the studies' run identity hashes exactly these keys;
    - ``resumable``: may differ between a run and its ``resume = true`` continuation.
    """
    roles = {"client": client, "outcome": outcome, "resumable": resumable}
    return Field(default, json_schema_extra={"roles": roles}, **constraints)


BENCHMARKS: dict[str, dict[str, Any]] = {"text-small": TEXT_SMALL}  # benchmark -> preset (kebab-case keys)
STRATEGY_SHORTHANDS = {  # strategy -> (strategy, init, default merge, atm-split)
    "ta": ("oneshot", "pretrained", "ta", "auto"),
    "pa-atm": ("atm", "pretrained", "mean", "auto"),
    "ph-atm": ("atm", "ta", "mean", "auto"),
    "valft-atm": ("atm", "pretrained", "mean", "validation"),  # paper 000's valFT ATM (Sec. 6.5)
}
COEFFICIENT_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # {0, 0.05, ..., 1.0}: paper 004, A.1


def coefficient_grid(grid: Sequence[float], finetune: str, sparsity: float) -> tuple[float, ...]:
    """The scaling coefficients searched for task vectors of fine-tuning mode ``finetune``: ``grid``, times
    ``1 / (1 - sparsity)`` for TaLoS (paper 004, A.1: sparse task vectors have a lower norm, so the range is
    stretched; sparsity 0.9 turns {0, 0.05, ..., 1} into {0, 0.5, ..., 10}). Task addition (the one-shot
    lambda) and task negation (alpha) both search this grid."""
    stretch = 1.0 / (1.0 - sparsity) if finetune == "talos" else 1.0
    return tuple(v * stretch for v in grid)


class RunConfig(BaseModel):
    """Everything a run needs. Defaults are the embedded default run (PA-ATM, 10 rounds x 1 epoch).

    Paper defaults kept here: the ATM merge step is the unweighted mean of the task vectors with
    alpha = 1 (paper 000, Eq. 5), and any other operator inside ATM is applied as a mean with scaling 1
    (paper 000, Sec. 6.1); one-shot lambda chosen from {0, 0.05, ..., 1.0} by normalized validation
    accuracy (paper 004, A.1; stretched by 1 / (1 - sparsity) for TaLoS); 10 epochs budget per task;
    validation split = 10% of train (paper 001, Section 4); TIES k (0.15), Breadcrumbs beta / gamma,
    DARE p as in paper 000 Section 5; TATR 1% trust fraction and 128 exemplars (paper 003); TaLoS
    sparsity 0.9, 4 soft-masked calibration rounds (paper 004). Learning rate 1e-4 is the measured
    working value for MobileNetV2 (the papers' 1e-5 is for CLIP ViT-B/16).
    """

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True,
                              allow_inf_nan=False)

    # What runs. strategy shorthands: ta = oneshot + ta; pa-atm = atm from the pretrained model;
    # ph-atm = atm from the TA-merged model, fine-tuning on the validation splits; valft-atm = atm from
    # the pretrained model, fine-tuning on the validation splits (paper 000's valFT ATM).
    run_name: str = setting("default", pattern=r"^[A-Za-z0-9._-]+$", outcome=False)
    output_dir: str = setting("outputs", outcome=False)
    benchmark: Literal["", "text-small"] = ""  # a preset of the keys below (see BENCHMARKS)
    strategy: Literal["oneshot", "atm", "ta", "pa-atm", "ph-atm", "valft-atm"] = "atm"
    tasks: tuple[str, ...] = ("fashion-mnist", "mnist", "animal-mnist", "digits")
    seed: int = setting(0, ge=0, client=True)
    individual: bool = True

    # Budget. oneshot: one round of budget-epochs. atm: `rounds` rounds of epochs-per-round epochs.
    # The individual upper bound and PH-ATM's TA start fine-tune for budget-epochs.
    budget_epochs: int = Field(10, ge=1)
    rounds: int = Field(10, ge=1)
    epochs_per_round: int = Field(1, ge=1)
    init: Literal["pretrained", "ta"] = "pretrained"
    init_checkpoint: str = ""  # PH-ATM from a merged encoder file (safetensors) instead of running TA
    # the split ATM rounds fine-tune on; auto: validation for PH-ATM (a merged start), train otherwise
    atm_split: Literal["auto", "train", "validation"] = "auto"

    # Merging: the operator (atmflow.merging.registry) and its parameters. Each parameter has its own
    # run-config key, declared by its rule (ties-k, breadcrumbs-beta, ...), collected in merge_params.
    # merge-lambda 0 = not set: one-shot runs choose lambda from lambda-grid (else the operator's default
    # scaling), ATM applies the operator as a mean with scaling 1 (paper 000, Sec. 6.1).
    merge: str = ""
    merge_lambda: float = Field(0.0, ge=0)
    lambda_grid: tuple[float, ...] = COEFFICIENT_GRID
    # how one-shot runs pick lambda on validation: normalized (mean of merged / fine-tuned validation
    # accuracy per task, paper 004 A.1) or absolute (mean validation accuracy)
    lambda_selection: Literal["normalized", "absolute"] = "normalized"
    merge_params: dict[str, float | int] = Field(default_factory=dict, exclude=True)  # {run-config key: value}
    tatr_exemplars: int = Field(128, ge=0)  # 0: zero-shot TATR (|tau| as the gradient estimate); else >= 16
    aggregation: Literal["uniform", "examples"] = "uniform"

    # Privacy (atmflow.privacy, docs/privacy.md): "secagg" = SecAgg+ secure aggregation, the server learns only
    # the sum of a round's task vectors; "dp" = DP-SGD on every client within (dp-epsilon, dp-delta) (dp-delta
    # 0: 1 / the client's training examples), or with dp-noise-multiplier given instead; "secagg+dp" = both
    privacy: Literal["none", "secagg", "dp", "secagg+dp"] = setting("none", client=True)
    dp_epsilon: float = setting(0.0, ge=0, client=True)
    dp_delta: float = setting(0.0, ge=0, lt=1, client=True)
    dp_noise_multiplier: float = setting(0.0, ge=0, client=True)
    dp_max_grad_norm: float = setting(1.0, gt=0, client=True)
    # SecAgg+: each task-vector entry must lie in [-c, c] (c = secagg-clipping-range; a node whose vector does
    # not fails with a clear error) and is quantized to secagg-quantization-range levels over [-c, c]; a lost
    # node is reconstructed when at least secagg-threshold of the shares answer (atmflow.privacy.secagg)
    secagg_clipping_range: float = Field(1.0, gt=0)
    secagg_quantization_range: int = Field(2**22, ge=2)
    secagg_threshold: float = Field(0.75, gt=0, le=1)

    # Robustness and restarts
    on_missing_task: Literal["fail", "skip"] = "fail"
    resume: bool = setting(False, outcome=False, resumable=True)
    # resume = true and no checkpoint in the run folder: "fail" (a clear error) or "start" (a fresh run)
    resume_missing: Literal["fail", "start"] = setting("fail", outcome=False, resumable=True)
    # clients cache task vectors here (same base + instructions -> no retraining)
    cache_dir: str = setting("", outcome=False)

    # Client fine-tuning
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    batch_size: int = Field(32, ge=1)
    full_batch: bool = False
    num_threads: int = setting(1, ge=1, outcome=False)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", client=True)
    # float64: exact checks such as Theorem 3.1
    precision: Literal["float32", "float64"] = setting("float32", client=True)
    # auto: bf16 autocast when on CUDA with float32 weights
    amp: Literal["auto", "off", "bf16"] = setting("auto", client=True)
    num_workers: int = Field(0, ge=0)  # threads that decode lazily loaded data sets (0: in the caller)
    # The fine-tuning recipe; "auto" = the model family's (atmflow.models.registry: open_clip the literature's,
    # the others a constant learning rate, no clipping, no augmentation). See recipe() and docs/config.md.
    lr_schedule: Literal["auto", "constant", "cosine"] = "auto"
    warmup_steps: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # cosine: linear warm-up steps
    grad_clip: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"  # max gradient norm; 0 = none
    train_transform: Literal["auto", "augment", "eval"] = setting("auto", client=True)  # augment: the family's
    # TaLoS sparse fine-tuning (paper 004): talos-sparsity = fraction of the maskable parameters NOT
    # updated (paper default 0.9: 10% are fine-tuned), mask calibrated over talos-rounds rounds (paper: 4)
    finetune: Literal["full", "talos"] = setting("full", client=True)
    talos_sparsity: float = setting(0.9, ge=0, lt=1, client=True)
    talos_rounds: int = setting(4, ge=1, client=True)
    # which model each calibration round scores: soft-masked (Algorithm 1) or unmasked (docs/talos.md)
    talos_calibration: Literal["soft-masked", "unmasked"] = setting("soft-masked", client=True)
    # task vectors on the wire: exact (each in its own dtype), or rounded to float32 / bfloat16 / float16
    transport_dtype: Literal["exact", "float32", "bfloat16", "float16"] = "exact"

    # Model family, model and frozen heads ("" / "auto": the family's default, atmflow.models.registry)
    model_family: str = setting("mobilenet-v2", client=True)
    model: str = setting("", client=True)
    pretrained: str = setting("", client=True)
    image_size: int = setting(64, ge=32, le=224, client=True)  # mobilenet-v2 input size (open_clip: the model's own)
    # hf-text: tokens per example (a sentence pair: both together)
    max_length: int = setting(128, ge=8, le=512, client=True)
    head: str = setting("auto", client=True)
    probe_shots: int = setting(3, ge=1, client=True)
    head_temperature: float = setting(10.0, gt=0, client=True)

    # Data: per-task subsample sizes and split seed
    # (0 = all: the literature's split, validation = val-fraction of train, at most val-max)
    train_size: int = setting(400, ge=0, client=True)
    test_size: int = setting(300, ge=0, client=True)
    val_fraction: float = setting(0.1, gt=0, lt=1, client=True)
    val_max: int = setting(VAL_MAX, ge=1, client=True)
    data_seed: int = setting(0, ge=0, client=True)
    fashion_mnist_dir: str = setting(DEFAULT_FASHION_MNIST_DIR, client=True)
    data_sources: str = setting("", client=True)  # "task=hub-name-or-path,..." (atmflow.data.tasks)
    dataset_dir: str = setting("", client=True)  # <dataset-dir>/<task> is used when it exists
    hf_cache_dir: str = setting("", client=True)  # Hugging Face cache for weights and data sets ("" = HF_HOME default)
    # own task definitions (TOML, atmflow.data.own_tasks); relative: to the current folder (docs/data.md)
    task_file: str = setting("", client=True)

    # Orchestration
    round_timeout: float = setting(3600.0, gt=0, outcome=False, resumable=True)
    node_wait_s: float = setting(120.0, gt=0, outcome=False, resumable=True)
    # deployment: TOML file (on the ServerApp's machine) binding each task to its SuperNode's public key
    # (atmflow.server.node_keys); "" = tasks are bound to the nodes that claim them in the handshake only
    node_keys_file: str = setting("", outcome=False, resumable=True)

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, str | list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError('expected comma-separated task names such as "mnist,digits"')
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        names = [n for n in names if n]
        if len(names) < 2:
            raise ValueError("merging needs at least two tasks")
        if len(set(names)) != len(names):
            raise ValueError(f"task listed twice: {names}")
        return tuple(names)

    @model_validator(mode="before")
    @classmethod
    def _collect_merge_params(cls, data: Any) -> Any:
        """Move the merge rules' keys (:func:`atmflow.merging.registry.config_params`) into ``merge_params``,
        with each rule's default for an absent key, and check each against its rule's declared range."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        given = dict(out.pop("merge_params", None) or out.pop("merge-params", None) or {})
        settings = {}
        for key, p in config_params().items():
            for name in (key, key.replace("-", "_")):
                if name in out:
                    given[key] = out.pop(name)
            value = given.get(key, p.default)
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = float(value) if isinstance(p.default, float) else (
                    int(value) if float(value).is_integer() else value)
            if not p.is_valid(value):
                raise ValueError(f"{key}: {value!r} is not allowed ({p.allowed}; {p.meaning})")
            settings[key] = value
        out["merge_params"] = settings
        return out

    @model_validator(mode="before")
    @classmethod
    def _apply_benchmark(cls, data: Any) -> Any:
        """``benchmark = "text-small"``: its preset (:data:`BENCHMARKS`) for every key that is absent or
        at its default (a Flower run config always carries every key, so "not set" means "default")."""
        if not isinstance(data, dict) or not data.get("benchmark"):
            return data
        if data["benchmark"] not in BENCHMARKS:
            return data  # the field's own validation names the allowed values
        out = dict(data)
        for key, value in BENCHMARKS[data["benchmark"]].items():
            name = key.replace("-", "_")
            given = out.get(key, out.get(name))
            if given is None or _normalised(given) == _normalised(cls.model_fields[name].default):
                out.pop(name, None)
                out[key] = value
        return out

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        """``strategy = "ta" | "pa-atm" | "ph-atm" | "valft-atm"`` -> strategy, init, default merge and ATM split."""
        if isinstance(data, dict) and data.get("strategy") in STRATEGY_SHORTHANDS:
            strategy, init, merge, split = STRATEGY_SHORTHANDS[data["strategy"]]
            given_split = data.get("atm-split", data.get("atm_split", "auto"))
            data = {**data, "strategy": strategy, "init": init, "merge": data.get("merge") or merge,
                    "atm-split": split if given_split == "auto" else given_split}
            data.pop("atm_split", None)
        return data

    @field_validator("merge")
    @classmethod
    def _known_merge(cls, value: str) -> str:
        if value and value not in METHODS:
            raise ValueError(unknown_method_message(value))
        return value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value in (".", ".."):
            raise ValueError("must be a plain folder name (letters, digits, '.', '_', '-'), not '.' or '..': "
                             "results go to <output-dir>/<run-name>/")
        return value

    @field_validator("tatr_exemplars")
    @classmethod
    def _exemplar_floor(cls, value: int) -> int:
        if 0 < value < MIN_TATR_EXEMPLARS:
            raise ValueError(f"must be 0 (zero-shot TATR) or at least {MIN_TATR_EXEMPLARS}: a mean gradient over "
                             "fewer examples reveals them to the server (docs/config.md, tatr-exemplars)")
        return value

    @field_validator("train_size", "test_size")
    @classmethod
    def _zero_or_ten(cls, value: int) -> int:
        if 0 < value < 10:
            raise ValueError("must be 0 (all examples) or at least 10")
        return value

    @field_validator("model_family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        family_entry(value)
        return value

    @field_validator("lambda_grid", mode="before")
    @classmethod
    def _parse_grid(cls, value: Any) -> tuple[float, ...]:
        grid = _float_list(value)
        if any(v < 0 for v in grid):
            raise ValueError("every lambda in the grid must be >= 0 (0 = the pretrained model)")
        return grid

    @model_validator(mode="after")
    def _check_tasks(self) -> RunConfig:
        """Every task is built in or defined in ``task-file``; ``data-sources`` names known tasks."""
        own_task_specs(self.task_file_path)  # a task file is checked whole, even when no task of it runs
        unknown = []
        for name in self.tasks:
            try:
                task_spec(name, self.task_file_path)
            except TaskFileError:
                raise
            except ValueError as err:
                unknown.append(str(err))
        if unknown:
            raise ValueError("tasks: " + "; ".join(unknown))
        try:
            parse_data_sources(self.data_sources, self.task_file_path)
        except TaskFileError:
            raise
        except ValueError as err:
            raise ValueError(f"data-sources: {err}") from None
        return self

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        for method in METHODS:  # constraints between one rule's parameters (e.g. Breadcrumbs' beta <= gamma)
            make_rule(method, rule_params(method, self.merge_params))
        if self.aggregation == "examples" and not get_rule(self.merge_method).linear:
            linear = ", ".join(name for name, rule in METHODS.items() if rule.linear)
            raise ValueError(f"aggregation='examples' is defined for the linear merges ({linear}), "
                             f"not for merge={self.merge_method!r}")
        if self.init_checkpoint and self.strategy != "atm":
            raise ValueError("init-checkpoint starts an ATM run (PH-ATM); it needs strategy='atm'")
        if self.atm_split != "auto" and self.strategy != "atm":
            raise ValueError("atm-split sets the split of ATM rounds; a one-shot run fine-tunes on train "
                             "(use strategy='atm', 'pa-atm', 'ph-atm' or 'valft-atm', or leave atm-split='auto')")
        entry = family_entry(self.model_family)
        if self.head != "auto" and self.head not in entry.heads:
            raise ValueError(f"head={self.head!r} is not available for model-family {self.model_family!r}; "
                             f"allowed: auto, {', '.join(entry.heads)}")
        wrong = [t for t in self.tasks if task_spec(t, self.task_file_path).modality != entry.modality]
        if wrong:
            raise ValueError(f"task(s) {wrong} are not {entry.modality} tasks, which model-family "
                             f"{self.model_family!r} needs")
        if self.amp == "bf16" and self.precision != "float32":
            raise ValueError("amp='bf16' (autocast) needs precision='float32' weights")
        if self.train_transform == "augment" and not entry.train_transform:
            raise ValueError(f"train-transform='augment': model-family {self.model_family!r} has no training "
                             "transform (open_clip has); use 'auto' or 'eval'")
        return self

    @model_validator(mode="after")
    def _check_privacy(self) -> RunConfig:
        """``privacy``: the DP keys and the runs DP-SGD can account for (atmflow.privacy.budget), and under
        secure aggregation the merges that can run on a sum (atmflow.privacy.scope)."""
        check_privacy_settings(self)
        if uses_secagg(self.privacy):
            problem = secagg_problem(self.merge_method, self.aggregation, len(self.tasks),
                                     self.secagg_quantization_range)
            if problem is not None:
                raise ValueError(problem)
        return self

    @property
    def data_source_map(self) -> dict[str, str]:
        """``data-sources`` parsed: ``{task: local folder or hub name}``."""
        return parse_data_sources(self.data_sources, self.task_file_path)

    @property
    def task_file_path(self) -> str:
        """``task-file`` as an absolute path ("" = none); a relative one is relative to the current folder."""
        return str(Path(self.task_file).expanduser().resolve()) if self.task_file else ""

    @property
    def model_name(self) -> str:
        """``model``, or the family's default model."""
        return self.model or family_entry(self.model_family).default_model

    @property
    def pretrained_source(self) -> str:
        """``pretrained`` (a tag or a local checkpoint path), or the family's default."""
        return self.pretrained or family_entry(self.model_family).default_pretrained

    @property
    def head_kind(self) -> str:
        """``head``, with ``auto`` resolved to the family's default head."""
        return family_entry(self.model_family).heads[0] if self.head == "auto" else self.head

    @property
    def merge_method(self) -> str:
        """The merge operator: ``merge``, or the strategy's default (oneshot: ta, atm: mean)."""
        return self.merge or ("ta" if self.strategy == "oneshot" else "mean")

    @property
    def ph_atm(self) -> bool:
        """PH-ATM: ATM that starts from a merged model (TA or ``init-checkpoint``)."""
        return self.strategy == "atm" and (self.init == "ta" or bool(self.init_checkpoint))

    @property
    def atm_finetune_split(self) -> str:
        """The split ATM rounds fine-tune on: ``atm-split``, or for ``auto`` validation for PH-ATM (paper
        001) and train otherwise."""
        if self.atm_split != "auto":
            return self.atm_split
        return "validation" if self.ph_atm else "train"

    @property
    def num_rounds(self) -> int:
        return 1 if self.strategy == "oneshot" else self.rounds

    @property
    def label(self) -> str:
        """A short name for reports: TA, TIES, PA-ATM10, PH-ATM10 (ties), valFT-ATM10, ..."""
        if self.strategy == "oneshot":
            return get_rule(self.merge_method).display_name()
        kind = "PH" if self.ph_atm else "valFT" if self.atm_finetune_split == "validation" else "PA"
        name = f"{kind}-ATM{self.rounds}"
        return name if self.merge_method == "mean" else f"{name} ({self.merge_method})"

    def recipe(self, *, atm: bool) -> Recipe:
        """The fine-tuning recipe of an ATM round (``atm``) or of a fine-tuning from the pretrained model for
        the whole budget (one-shot, individual models, PH-ATM's TA start): each ``"auto"`` key is the model
        family's (:mod:`atmflow.models.registry`), a set key applies to every fine-tuning of the run."""
        entry = family_entry(self.model_family)
        auto = entry.atm_recipe if atm else entry.finetune_recipe
        return Recipe(auto.lr_schedule if self.lr_schedule == "auto" else self.lr_schedule,
                      auto.warmup_steps if self.warmup_steps == "auto" else self.warmup_steps,
                      auto.grad_clip if self.grad_clip == "auto" else float(self.grad_clip))

    @property
    def augment(self) -> bool:
        """Whether clients fine-tune through the model family's training transform (``train-transform``)."""
        if self.train_transform == "auto":
            return family_entry(self.model_family).train_transform
        return self.train_transform == "augment"

    @property
    def dtype(self) -> torch.dtype:
        import torch  # imported here so that validating a config stays fast

        return torch.float64 if self.precision == "float64" else torch.float32

    def client_settings(self) -> dict[str, Any]:
        """The settings that change what a client computes from a given message (data, head, seeds)."""
        keys = keys_with_role("client")
        return {k: v for k, v in self.to_run_config().items() if k in keys}

    def operator_params(self, scale: float | None = None) -> dict[str, float | int]:
        """The parameters of the merge operator (names as its rule declares them); its scaling coefficient
        is ``scale``, else ``merge-lambda`` when set, else the rule's default."""
        return rule_params(self.merge_method, self.merge_params, scale if scale is not None else
                           (self.merge_lambda or None))

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The resolved config as a Flower run config (kebab-case keys, lists as comma-separated strings).

        Stored in results.json; feeding it back to :func:`load_config` gives the same config.
        """
        flat = {**self.model_dump(mode="json", by_alias=True), **self.merge_params}
        return {k: ",".join(str(x) for x in v) if isinstance(v, list) else v for k, v in flat.items()}


def keys_with_role(role: str) -> frozenset[str]:
    """The run-config keys whose field has ``role`` (``client``, ``outcome`` or ``resumable``; see
    :func:`setting`). The merge rules' keys change outcomes only."""
    keys = {name.replace("_", "-") for name, f in RunConfig.model_fields.items() if _roles(f).get(role)}
    return frozenset(keys | set(config_params()) if role == "outcome" else keys)


def _roles(field: FieldInfo) -> dict[str, bool]:
    extra = field.json_schema_extra
    return dict(extra["roles"]) if isinstance(extra, dict) and "roles" in extra else {"outcome": True}


def _normalised(value: Any) -> Any:
    """Comparable form of a config value: lists and comma-separated strings as tuples of strings."""
    if isinstance(value, str) and "," in value or isinstance(value, list | tuple):
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(v).strip() for v in items if str(v).strip())
    return value


class ConfigError(ValueError):
    """A run config that cannot run; the message names each bad key and what is allowed."""


def load_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate a flat kebab-case mapping (Flower's ``context.run_config``)."""
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if not key:  # a check across keys, or of a merge rule's key: the message names the keys
                lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
            elif e["type"] == "extra_forbidden":
                lines.append(f"  {key}: unknown key{_closest_key(key)}; see [tool.flwr.app.config] in pyproject.toml")
            else:
                lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
        raise ConfigError("invalid run config:\n" + "\n".join(lines)) from None


def _closest_key(key: str) -> str:
    import difflib

    known = [*(n.replace("_", "-") for n in RunConfig.model_fields if n != "merge_params"), *config_params()]
    close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
