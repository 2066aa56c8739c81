"""Nothing a config sends is trusted (issue 16): non-finite floats, wrong types, paths out of output-dir,
a floor on tatr-exemplars, and the run's preflight checks (output folder, init-checkpoint, resume)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from atmflow.config import ConfigError, load_config
from atmflow.server.experiment import check_output_folder, check_resumable, load_start_checkpoint


@pytest.mark.parametrize("key", ["lr", "weight-decay", "head-temperature", "merge-lambda", "round-timeout",
                                 "node-wait-s", "val-fraction", "talos-sparsity", "ties-k", "dare-p"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_key_refuses_non_finite_values_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"\n  {key}: "):
        load_config({key: value})


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"tasks": 5}, "tasks: expected comma-separated task names"),
    ({"tasks": [1, 2]}, "tasks: expected comma-separated task names"),
    ({"lambda-grid": 5}, "lambda-grid: expected comma-separated numbers"),
    ({"lambda-grid": "0.5,abc"}, "lambda-grid: expected comma-separated numbers"),
    ({"lambda-grid": "0.5,inf"}, "lambda-grid: every number must be finite"),
    ({"run-name": ".."}, "run-name: must be a plain folder name"),
    ({"run-name": "."}, "run-name: must be a plain folder name"),
    ({"run-name": "../up"}, "run-name: String should match pattern"),
    ({"tatr-exemplars": 1}, "tatr-exemplars: must be 0 (zero-shot TATR) or at least 16"),
    ({"tatr-exemplars": 15}, "tatr-exemplars: must be 0"),
    ({"resume-missing": "maybe"}, "resume-missing"),
])
def test_bad_types_and_names_are_config_errors_naming_the_key(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert expected in str(err.value)


def test_allowed_edge_values_still_load() -> None:
    cfg = load_config({"tatr-exemplars": 0, "run-name": "a.b-c_1", "lambda-grid": [0.5, 1]})
    assert (cfg.tatr_exemplars, cfg.run_name, cfg.lambda_grid) == (0, "a.b-c_1", (0.5, 1.0))
    assert load_config({"tatr-exemplars": 16}).tatr_exemplars == 16


def test_resume_with_nothing_to_resume_fails_unless_asked_to_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"holds no checkpoint.json to resume from.*resume-missing"):
        check_resumable(tmp_path, load_config({"resume": True}), None)
    check_resumable(tmp_path, load_config({"resume": True, "resume-missing": "start"}), None)
    check_resumable(tmp_path, load_config({}), None)


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"cannot write results to .*file/run"):
        check_output_folder(blocker / "run")
    check_output_folder(tmp_path / "outputs" / "run")
    assert not (tmp_path / "outputs").exists()  # the check leaves nothing behind


def test_init_checkpoint_must_exist_load_fit_and_be_finite(tmp_path: Path) -> None:
    pretrained = {"w": torch.zeros(2, 2), "frozen": torch.ones(3)}
    expected = {"w": pretrained["w"]}
    with pytest.raises(ValueError, match="does not exist"):
        load_start_checkpoint(str(tmp_path / "missing.safetensors"), pretrained, expected)
    (tmp_path / "junk.safetensors").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="does not load"):
        load_start_checkpoint(str(tmp_path / "junk.safetensors"), pretrained, expected)
    save_file({"w": torch.zeros(3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="does not fit the model"):
        load_start_checkpoint(str(tmp_path / "shape.safetensors"), pretrained, expected)
    save_file({"w": torch.tensor([[1.0, math.nan], [0.0, 0.0]])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'w' has non-finite"):
        load_start_checkpoint(str(tmp_path / "nan.safetensors"), pretrained, expected)
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "good.safetensors"))
    start = load_start_checkpoint(str(tmp_path / "good.safetensors"), pretrained, expected)
    assert torch.equal(start["w"], torch.ones(2, 2)) and torch.equal(start["frozen"], torch.ones(3))
