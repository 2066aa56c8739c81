"""Loading a model puts the Hugging Face hub offline, so a missing model fails at once (without it,
transformers retried the hub for ~47 s on this machine without network before failing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from atmflow.models.text import TextWeightsUnavailableError, model_dir


def test_a_missing_text_model_fails_at_once_with_the_hub_offline(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(TextWeightsUnavailableError, match="hf download google-bert/bert-base-uncased"):
        model_dir("bert-base-uncased", cache_dir=str(tmp_path))
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True

    from transformers import AutoTokenizer

    start = time.perf_counter()
    with pytest.raises(OSError):  # what a loader that still asks the hub gets now: an error, no retries
        AutoTokenizer.from_pretrained("google-bert/bert-base-uncased", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
