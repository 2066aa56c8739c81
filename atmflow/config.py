"""Run configuration: one validated pydantic model for the whole run.

The Flower run config (``[tool.flwr.app.config]`` in ``pyproject.toml`` plus ``--run-config``
overrides) is a flat mapping with kebab-case keys. :func:`load_config` turns it into a
:class:`RunConfig` before any work starts; an unknown key or a bad value raises
:class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    import torch

from atmflow.data.sources import DEFAULT_FASHION_MNIST_DIR, TASKS


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _float_list(value: Any) -> tuple[float, ...]:
    """Accept "0.1,0.2", a list, or an empty string (no grid)."""
    if isinstance(value, str):
        return tuple(float(v) for v in value.split(",") if v.strip())
    return tuple(float(v) for v in value)


class RunConfig(BaseModel):
    """Everything a run needs. Defaults are the embedded default run (PA-ATM, 10 x 1 epoch).

    Paper defaults kept here: ATM merge = unweighted mean of task vectors with alpha = 1
    (paper 000, Eq. 5); Task Arithmetic lambda = 0.3 (Ilharco et al.); 10 epochs budget per task;
    validation split = 10% of train (paper 001, Section 4). Learning rate 1e-4 is the measured
    working value for MobileNetV2 (the papers' 1e-5 is for CLIP ViT-B/16).
    """

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True)

    # What runs
    run_name: str = Field("default", pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = "outputs"
    strategy: Literal["ta", "pa-atm"] = "pa-atm"
    tasks: tuple[str, ...] = ("fashion-mnist", "mnist", "animal-mnist", "digits")
    seed: int = Field(0, ge=0)
    individual: bool = True

    # Budget: every task fine-tunes `budget-epochs` epochs in total.
    # TA spends them in one round; PA-ATM in budget-epochs / epochs-per-round rounds.
    budget_epochs: int = Field(10, ge=1)
    epochs_per_round: int = Field(1, ge=1)

    # Merging
    ta_lambda: float = Field(0.3, gt=0)
    ta_lambda_grid: tuple[float, ...] = ()
    atm_alpha: float = Field(1.0, gt=0)

    # Client fine-tuning
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    batch_size: int = Field(32, ge=1)
    full_batch: bool = False
    num_threads: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "float64"] = "float32"  # float64: exact checks such as Theorem 3.1

    # Model and frozen heads
    model: Literal["mobilenet-v2"] = "mobilenet-v2"
    image_size: int = Field(64, ge=32, le=224)
    head: Literal["probe", "random"] = "probe"
    probe_shots: int = Field(3, ge=1)
    head_temperature: float = Field(10.0, gt=0)

    # Data: per-task subsample sizes and split seed
    train_size: int = Field(400, ge=10)
    test_size: int = Field(300, ge=10)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    data_seed: int = Field(0, ge=0)
    fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR

    # Orchestration
    round_timeout: float = Field(3600.0, gt=0)
    node_wait_s: float = Field(120.0, gt=0)

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> tuple[str, ...]:
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        names = [n for n in names if n]
        unknown = [n for n in names if n not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; available: {sorted(TASKS)}")
        if len(names) < 2:
            raise ValueError("merging needs at least two tasks")
        if len(set(names)) != len(names):
            raise ValueError(f"task listed twice: {names}")
        return tuple(names)

    @field_validator("ta_lambda_grid", mode="before")
    @classmethod
    def _parse_grid(cls, value: Any) -> tuple[float, ...]:
        grid = _float_list(value)
        if any(v <= 0 for v in grid):
            raise ValueError("every lambda in the grid must be > 0")
        return grid

    @model_validator(mode="after")
    def _check_budget(self) -> RunConfig:
        if self.strategy == "pa-atm" and self.budget_epochs % self.epochs_per_round:
            raise ValueError(
                f"budget-epochs ({self.budget_epochs}) must be a multiple of "
                f"epochs-per-round ({self.epochs_per_round}) for PA-ATM"
            )
        return self

    @property
    def rounds(self) -> int:
        """Number of server rounds: 1 for TA, budget / epochs-per-round for PA-ATM."""
        return 1 if self.strategy == "ta" else self.budget_epochs // self.epochs_per_round

    @property
    def dtype(self) -> torch.dtype:
        import torch  # imported here so that validating a config stays fast

        return torch.float64 if self.precision == "float64" else torch.float32

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The resolved config as a Flower run config (kebab-case keys, lists as comma-separated strings).

        Stored in results.json; feeding it back to :func:`load_config` gives the same config.
        """
        flat = self.model_dump(mode="json", by_alias=True)
        return {k: ",".join(str(x) for x in v) if isinstance(v, list) else v for k, v in flat.items()}


class ConfigError(ValueError):
    """A run config that cannot run; the message names each bad key and what is allowed."""


def load_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate a flat kebab-case mapping (Flower's ``context.run_config``)."""
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(config)"
            if e["type"] == "extra_forbidden":
                lines.append(f"  {key}: unknown key; see [tool.flwr.app.config] in pyproject.toml")
            else:
                lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid run config:\n" + "\n".join(lines)) from None
