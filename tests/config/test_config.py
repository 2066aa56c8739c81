from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atmflow.app_config import app_defaults, parse_overrides
from atmflow.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_defaults_are_the_model_defaults() -> None:
    assert load_config(app_defaults(ROOT)) == RunConfig()
    assert RunConfig().to_run_config() == app_defaults(ROOT)


def test_paper_defaults() -> None:
    cfg = RunConfig()
    assert (cfg.strategy, cfg.init, cfg.merge_method, cfg.label) == ("atm", "pretrained", "mean", "PA-ATM10")
    assert (cfg.budget_epochs, cfg.rounds, cfg.epochs_per_round, cfg.val_fraction) == (10, 10, 1, 0.1)
    # paper 004, A.1: {0, 0.05, ..., 1.0}, chosen by normalized validation accuracy
    assert cfg.lambda_grid == tuple(i / 20 for i in range(21)) and cfg.lambda_selection == "normalized"
    # paper 000's baselines: TIES keeps the top 15% (docs/merging.md says why not the TIES paper's 20%)
    assert cfg.merge_params == {"ties-k": 0.15, "breadcrumbs-beta": 0.85, "breadcrumbs-gamma": 0.993,
                                "breadcrumbs-per-row": 1, "dare-p": 0.9, "merge-seed": 0, "tatr-trust-fraction": 0.01}
    assert (cfg.finetune, cfg.talos_sparsity, cfg.talos_rounds, cfg.talos_calibration) == (
        "full", 0.9, 4, "soft-masked")
    assert (cfg.tatr_exemplars, cfg.on_missing_task) == (128, "fail")


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("ta", ("oneshot", "pretrained", "ta", "TA", False, "train")),
     ("pa-atm", ("atm", "pretrained", "mean", "PA-ATM10", False, "train")),
     ("ph-atm", ("atm", "ta", "mean", "PH-ATM10", True, "validation")),
     ("valft-atm", ("atm", "pretrained", "mean", "valFT-ATM10", False, "validation"))],
)
def test_strategy_shorthands(strategy: str, expected: tuple) -> None:
    from atmflow.strategies.plan import RunPlan

    cfg = load_config({"strategy": strategy})
    split = RunPlan.from_config(cfg).instructions.split
    assert (cfg.strategy, cfg.init, cfg.merge_method, cfg.label, cfg.ph_atm, split) == expected
    assert load_config(cfg.to_run_config()) == cfg


def test_resolved_config_round_trips() -> None:
    cfg = load_config({"strategy": "ta", "lambda-grid": "0.1,0.5", "tasks": "mnist,digits"})
    assert cfg.lambda_grid == (0.1, 0.5) and cfg.num_rounds == 1
    assert load_config(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "foo"}, "strategy: Input should be 'oneshot', 'atm', 'ta', 'pa-atm', 'ph-atm' or 'valft-atm'"),
        ({"strategy": "ta", "atm-split": "validation"}, "atm-split sets the split of ATM rounds"),
        ({"lambda-grid": "0,-0.1"}, "every lambda in the grid must be >= 0"),
        ({"talos-calibration": "masked"}, "talos-calibration: Input should be 'soft-masked' or 'unmasked'"),
        ({"merge": "slerp"}, "merge: unknown merge method 'slerp'; allowed: mean, ta, ties"),
        ({"on-missing-task": "ignore"}, "on-missing-task: Input should be 'fail' or 'skip'"),
        ({"merge": "ties", "aggregation": "examples"}, "aggregation='examples' is defined for the linear merges"),
        ({"breadcrumbs-beta": 0.9, "breadcrumbs-gamma": 0.5}, "beta=0.9 must not exceed gamma=0.5"),
        ({"strategy": "ta", "init-checkpoint": "x.safetensors"}, "init-checkpoint starts an ATM run"),
        ({"lr": -1.0}, "lr: Input should be greater than 0"),
        ({"tasks": "mnist,cifar10"}, "tasks: unknown task 'cifar10' (did you mean 'cifar100'?); available"),
        ({"tasks": "mnist"}, "at least two tasks"),
        ({"head": "mlp"}, "head='mlp' is not available for model-family 'mobilenet-v2'; allowed: auto, probe, random"),
        ({"learning-rate": 0.1}, "learning-rate: unknown key"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert expected in str(err.value)


def test_cli_validate_fails_fast_with_the_key() -> None:
    proc = subprocess.run([sys.executable, "-m", "atmflow.cli", "validate", "--project", str(ROOT),
                           "--run-config", "strategy='foo' batch-size=0"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert ("strategy: Input should be 'oneshot', 'atm', 'ta', 'pa-atm', 'ph-atm' or 'valft-atm' (got 'foo')"
            in proc.stderr)
    assert "batch-size: Input should be greater than or equal to 1" in proc.stderr


def test_override_syntax_matches_flwr_run() -> None:
    assert parse_overrides("strategy='ta' lr=0.001 full-batch=true tasks=\"mnist,digits\"") == {
        "strategy": "ta", "lr": 0.001, "full-batch": True, "tasks": "mnist,digits"}
    with pytest.raises(ConfigError):
        parse_overrides("strategy=ta")  # unquoted string: TOML rejects it, so does flwr run
