"""Own models by config alone: any torchvision classifier from a weights file or the torch cache, transformers
image encoders (ViT, CLIP vision tower) from a folder or the hub cache, text models by hub id from the cache.
Tiny random-weight models written by the tests; runs end to end through the in-process grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from testkit.tiny_models import hub_cache_entry, tiny_clip, tiny_vit, torchvision_weights

from atmflow.config import load_config
from atmflow.models.family import get_family
from atmflow.preflight import check_model
from atmflow.sim.local import run_inprocess

RUN: dict[str, Any] = {"tasks": "digits,mnist", "train-size": 40, "test-size": 10, "image-size": 32,
                       "budget-epochs": 1, "num-threads": 1, "lr": 1e-3, "lambda-grid": "0.5,1.0", "head": "random"}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(torchvision_weights(tmp_path_factory.mktemp("tv") / "resnet18.pth"))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_vit(tmp_path_factory.mktemp("vit")))


def test_torchvision_encoder_drops_the_final_layer_and_keeps_layers_in_eval(resnet_file: str) -> None:
    family = get_family(load_config({"model-family": "torchvision", "model": "resnet18", "pretrained": resnet_file}))
    family.check_available()
    encoder = family.pretrained_encoder().train()
    assert family.feature_dim == 512 and not any(k.startswith("model.fc.") for k in encoder.state_dict())
    assert not any(m.training for m in encoder.modules() if m is not encoder)  # BatchNorm statistics frozen
    saved = torch.load(resnet_file, weights_only=True)
    assert torch.equal(encoder.state_dict()["model.conv1.weight"], saved["conv1.weight"])
    x = family.preprocess(torch.randint(0, 255, (2, 8, 8), dtype=torch.uint8).numpy())
    assert encoder(x).shape == (2, 512)


def test_torchvision_weights_name_reads_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cfg = load_config({"model-family": "torchvision", "model": "resnet18", "pretrained": "IMAGENET1K_V1"})
    (problem,) = check_model(cfg)
    assert "not in the local torch cache" in problem
    assert "torchvision.models.get_model('resnet18', weights='IMAGENET1K_V1')" in problem
    (tmp_path / "checkpoints").mkdir()
    torchvision_weights(tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert check_model(cfg) == []


@pytest.mark.parametrize(("extra", "expected"), [
    ({"model-family": "torchvision", "model": "resnt18"}, "did you mean 'resnet18'"),
    ({"model-family": "torchvision", "model": "squeezenet1_0", "pretrained": "/nonexistent/w.pth"}, "not found"),
    ({"model-family": "torchvision", "pretrained": "IMAGENET1K_V9"}, "did you mean 'IMAGENET1K_V1'"),
    ({"model-family": "hf-vision", "model": "someone/missing-vit"}, "hf download someone/missing-vit"),
    ({"model-family": "hf-vision", "model": "/nonexistent/vit"}, "no config.json"),
    ({"model-family": "hf-text", "model": "someone/missing-bert", "tasks": "debate-party,language-id"},
     "hf download someone/missing-bert"),
])
def test_missing_or_misspelt_models_are_named(tmp_path: Path, extra: dict[str, str], expected: str) -> None:
    (problem,) = check_model(load_config({"hf-cache-dir": str(tmp_path), **extra}))
    assert expected in problem


def test_torchvision_weights_of_another_model_are_refused(resnet_file: str) -> None:
    cfg = load_config({"model-family": "torchvision", "model": "resnet34", "pretrained": resnet_file})
    (problem,) = check_model(cfg)
    assert "do not fit torchvision model 'resnet34'" in problem


def test_vit_folder_and_hub_id_give_the_same_encoder(vit_dir: str, tmp_path: Path) -> None:
    hub_cache_entry(tmp_path, "me/tiny-vit", Path(vit_dir))
    by_folder = get_family(load_config({"model-family": "hf-vision", "model": vit_dir}))
    by_id = get_family(load_config({"model-family": "hf-vision", "model": "me/tiny-vit",
                                    "hf-cache-dir": str(tmp_path)}))
    by_id.check_available()
    a, b = by_folder.pretrained_encoder().state_dict(), by_id.pretrained_encoder().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("pooler" in k for k in a) and by_folder.feature_dim == 16
    images = torch.randint(0, 255, (3, 28, 28), dtype=torch.uint8).numpy()
    assert by_folder.preprocess(images).shape == (3, 3, 16, 16)


def test_clip_checkpoint_gives_its_vision_tower(tmp_path: Path) -> None:
    from transformers import CLIPModel

    family = get_family(load_config({"model-family": "hf-vision", "model": str(tiny_clip(tmp_path))}))
    encoder = family.pretrained_encoder()
    tower = CLIPModel.from_pretrained(str(tmp_path)).vision_model.state_dict()  # the text tower is left out
    mine = encoder.state_dict()
    assert len(mine) == len(tower) and all(torch.equal(mine[f"model.{k}"], v) for k, v in tower.items())
    assert encoder(torch.zeros(2, 3, 16, 16)).shape == (2, family.feature_dim) == (2, 16)


def test_text_model_by_hub_id_from_the_cache(tmp_path: Path) -> None:
    from client.test_text import write_tiny_bert

    from atmflow.models.text import text_model

    folder = write_tiny_bert(tmp_path / "bert")
    hub_cache_entry(tmp_path / "cache", "me/tiny-bert", folder)
    assert text_model("me/tiny-bert").hub_id == "me/tiny-bert"
    cfg = load_config({"model-family": "hf-text", "model": "me/tiny-bert", "hf-cache-dir": str(tmp_path / "cache"),
                       "tasks": "debate-party,language-id"})
    assert check_model(cfg) == []
    assert get_family(cfg).pretrained_encoder().feature_dim == 16


@pytest.mark.parametrize("strategy", ["ta", "pa-atm"])
def test_torchvision_model_end_to_end(tmp_path: Path, strategy: str) -> None:
    weights = str(torchvision_weights(tmp_path / "w.pth", "mobilenet_v3_small"))  # small: seconds per run
    res = run_inprocess({**RUN, "model-family": "torchvision", "model": "mobilenet_v3_small", "pretrained": weights,
                         "strategy": strategy, "rounds": 2, "individual": strategy == "ta", "output-dir": str(tmp_path),
                         "run-name": strategy})
    assert sorted(res.rounds[-1].tasks) == ["digits", "mnist"] and (res.individual is not None) == (strategy == "ta")
    assert res.config["model-family"] == "torchvision" and (tmp_path / strategy / "final_encoder.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["ta", "pa-atm"])
def test_hf_vision_model_end_to_end(vit_dir: str, tmp_path: Path, strategy: str) -> None:
    res = run_inprocess({**RUN, "model-family": "hf-vision", "model": vit_dir, "head": "probe", "train-size": 100,
                         "strategy": strategy, "rounds": 2, "individual": False, "output-dir": str(tmp_path),
                         "run-name": strategy})
    assert [r.round for r in res.rounds] == ([1] if strategy == "ta" else [1, 2])
    assert all(0 <= s["accuracy"] <= 1 for r in res.rounds for s in r.tasks.values())
