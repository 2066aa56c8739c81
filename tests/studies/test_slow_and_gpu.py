"""Checks that CI skips: `pytest -m slow` (minutes) and `pytest -m gpu` (needs CUDA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from atmflow.sim.local import run_inprocess
from atmflow.studies import benchmark


@pytest.mark.slow
def test_benchmark_script_end_to_end(tmp_path: Path) -> None:
    code = benchmark.main(["--seeds", "0", "--workers", "2", "--out", str(tmp_path), "--train-size", "100",
                           "--test-size", "20", "--image-size", "32", "--budget-epochs", "1", "--atm-rounds", "2"])
    assert code == 0
    runs = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(runs["0"]) == {"pretrained", *benchmark.ONESHOT, "PH-ATM1", "PA-ATM1", "PA-ATM2", "individual"}
    assert "| PA-ATM2 |" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clients_fine_tune_on_the_gpu(tiny: dict[str, Any]) -> None:
    res = run_inprocess({**tiny, "run-name": "gpu", "strategy": "ta", "budget-epochs": 1, "lambda-grid": "",
                         "device": "cuda", "individual": False})
    assert res.rounds[0].avg_accuracy > 0


TINY_CLIP = {"model-family": "open_clip", "model": "atmflow-tiny-clip", "pretrained": "random"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_clip_fine_tunes_in_bf16_autocast_on_the_gpu(tiny: dict[str, Any]) -> None:
    from atmflow.client.task import local_task
    from atmflow.config import load_config
    from atmflow.models.family import get_family

    overrides = {**tiny, **TINY_CLIP, "tasks": "digits,mnist", "device": "cuda"}
    cfg = load_config(overrides)
    local = local_task("digits", cfg)
    assert local.amp and local.device.type == "cuda"
    encoder = get_family(cfg).pretrained_encoder().to(local.device)
    with local.autocast():
        assert encoder(local.data.train.x[:4].to(local.device)).dtype == torch.bfloat16
    res = run_inprocess({**overrides, "run-name": "gpu-clip", "strategy": "ta", "budget-epochs": 1,
                         "lambda-grid": "", "individual": False})
    assert res.rounds[0].avg_accuracy > 0


@pytest.mark.slow
def test_paper_backbone_builds_offline() -> None:
    """ViT-B/16's architecture (random weights, asked for explicitly) with its preprocessing and a
    zero-shot head: what a GPU run uses, minus the weights file."""
    from atmflow.models.clip import CLIPImageEncoder, load_clip, zeroshot_head

    clip, transform, tokenizer = load_clip("ViT-B-16", "random")
    encoder = CLIPImageEncoder(clip.visual)
    assert 85_000_000 < sum(p.numel() for p in encoder.parameters()) < 87_000_000
    from PIL import Image

    x = transform(Image.new("RGB", (300, 200))).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224)
    head = zeroshot_head(clip, tokenizer, ("banded", "dotted"), "dtd", torch.device("cpu"))
    with torch.no_grad():
        assert head(encoder(x)).shape == (1, 2)
