"""Run-config keys of the text family: the text-small preset, max-length, family / task modality."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from atmflow.config import ConfigError, load_config
from atmflow.data.text_tasks import TEXT_SMALL

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_text_small_preset_fills_every_key_left_at_its_default() -> None:
    cfg = load_config({**PYPROJECT, "benchmark": "text-small"})  # as Flower passes it: every key present
    assert cfg.model_family == "hf-text" and cfg.model_name == "minilm-l6" and cfg.head_kind == "probe"
    assert cfg.tasks == ("rt-polarity", "rt-subjectivity", "debate-party", "fortune-topic", "language-id")
    assert (cfg.max_length, cfg.train_size, cfg.test_size) == (TEXT_SMALL["max-length"], TEXT_SMALL["train-size"],
                                                               TEXT_SMALL["test-size"])
    assert (cfg.budget_epochs, cfg.rounds) == (TEXT_SMALL["budget-epochs"], TEXT_SMALL["rounds"])
    changed = load_config({**PYPROJECT, "benchmark": "text-small", "train-size": 100,
                           "tasks": "rt-polarity,language-id"})
    assert changed.train_size == 100 and changed.tasks == ("rt-polarity", "language-id")
    assert load_config({"benchmark": "text-small"}).model_family == "hf-text"  # absent keys too


def test_text_tasks_need_a_text_family_and_the_other_way_round() -> None:
    with pytest.raises(ConfigError, match=r"\['rt-polarity', 'language-id'\] are not image tasks"):
        load_config({"tasks": "rt-polarity,language-id"})
    with pytest.raises(ConfigError, match="are not text tasks"):
        load_config({"model-family": "hf-text", "tasks": "mnist,digits"})
    with pytest.raises(ConfigError, match="benchmark"):
        load_config({"benchmark": "text-large"})
    with pytest.raises(ConfigError, match="head='zeroshot' is not available for model-family 'hf-text'"):
        load_config({"model-family": "hf-text", "tasks": "glue-cola,glue-rte", "head": "zeroshot"})
    with pytest.raises(ConfigError, match="max-length"):
        load_config({"model-family": "hf-text", "tasks": "glue-cola,glue-rte", "max-length": 4})
