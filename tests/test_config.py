from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atmflow.cli import app_defaults, parse_overrides
from atmflow.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_are_the_model_defaults() -> None:
    assert load_config(app_defaults(ROOT)) == RunConfig()
    assert RunConfig().to_run_config() == app_defaults(ROOT)


def test_paper_defaults() -> None:
    cfg = RunConfig()
    assert (cfg.strategy, cfg.budget_epochs, cfg.epochs_per_round, cfg.rounds) == ("pa-atm", 10, 1, 10)
    assert (cfg.atm_alpha, cfg.ta_lambda, cfg.val_fraction) == (1.0, 0.3, 0.1)


def test_resolved_config_round_trips() -> None:
    cfg = load_config({"strategy": "ta", "ta-lambda-grid": "0.1,0.5", "tasks": "mnist,digits"})
    assert cfg.ta_lambda_grid == (0.1, 0.5) and cfg.rounds == 1
    assert load_config(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "foo"}, "strategy: Input should be 'ta' or 'pa-atm'"),
        ({"lr": -1.0}, "lr: Input should be greater than 0"),
        ({"tasks": "mnist,cifar10"}, "unknown task(s) ['cifar10']; available: ['animal-mnist', 'digits'"),
        ({"tasks": "mnist"}, "at least two tasks"),
        ({"head": "mlp"}, "head: Input should be 'probe' or 'random'"),
        ({"budget-epochs": 10, "epochs-per-round": 3}, "must be a multiple of epochs-per-round"),
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
    assert "strategy: Input should be 'ta' or 'pa-atm' (got 'foo')" in proc.stderr
    assert "batch-size: Input should be greater than or equal to 1" in proc.stderr


def test_override_syntax_matches_flwr_run() -> None:
    assert parse_overrides("strategy='ta' lr=0.001 full-batch=true tasks=\"mnist,digits\"") == {
        "strategy": "ta", "lr": 0.001, "full-batch": True, "tasks": "mnist,digits"}
    with pytest.raises(ConfigError):
        parse_overrides("strategy=ta")  # unquoted string: TOML rejects it, so does flwr run
