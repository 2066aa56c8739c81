"""The open_clip family on a tiny CLIP (package config, random weights): zero-shot heads, weights
resolution and its errors, and the whole vision path (fine-tune, task vectors, merge, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from testkit.hf_data import write_image_dataset

from atmflow.client.task import local_task
from atmflow.config import RunConfig, load_config
from atmflow.models.clip import CLIPImageEncoder, OpenCLIPFamily, load_clip, resolve_weights, zeroshot_head
from atmflow.models.family import get_family
from atmflow.models.registry import WeightsUnavailableError
from atmflow.models.templates import TEMPLATES
from atmflow.sim.local import run_inprocess

TINY_CLIP = {"model-family": "open_clip", "model": "atmflow-tiny-clip", "pretrained": "random"}
CPU = torch.device("cpu")


def test_open_clip_defaults_are_the_papers() -> None:
    cfg = load_config({"model-family": "open_clip", "tasks": "cars,dtd"})
    assert (cfg.model_name, cfg.pretrained_source, cfg.head_kind) == ("ViT-B-16", "openai", "zeroshot")


def test_zero_shot_head_is_the_literature_formula() -> None:
    """w_c = normalize(mean_t normalize(text(t(c)))), logits = exp(logit_scale) * normalize(f) @ W^T."""
    clip, _, tokenizer = load_clip("atmflow-tiny-clip", "random")
    names = ("banded", "dotted", "striped")
    head = zeroshot_head(clip, tokenizer, names, "dtd", CPU)
    assert not list(head.parameters()) and head.weight.shape == (3, 32)  # frozen: buffers only
    with torch.no_grad():
        for c, name in enumerate(names):
            texts = [t.format(name) for t in TEMPLATES["dtd"]]
            emb = torch.nn.functional.normalize(clip.encode_text(tokenizer(texts)), dim=-1).mean(0)
            assert torch.allclose(head.weight[c], emb / emb.norm(), atol=1e-6)
        assert head.scale == pytest.approx(float(clip.logit_scale.exp()))
        f = torch.randn(5, 32)
        expected = head.scale * torch.nn.functional.normalize(f, dim=-1) @ head.weight.T
        assert torch.allclose(head(f), expected, atol=1e-5)


def test_random_weights_are_seeded_and_only_on_request(tmp_path: Path) -> None:
    a = OpenCLIPFamily(RunConfig(**{k.replace("-", "_"): v for k, v in TINY_CLIP.items()}))
    enc = a.pretrained_encoder()
    assert isinstance(enc, CLIPImageEncoder) and a.trainable_keys(enc) == [k for k, _ in enc.named_parameters()]
    again = load_clip.__wrapped__("atmflow-tiny-clip", "random")[0].visual.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in enc.visual.state_dict().items())
    # a checkpoint file is loaded as is (an open_clip state dict of the whole model)
    clip = load_clip("atmflow-tiny-clip", "random")[0]
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in clip.state_dict().items()}
    torch.save(state, tmp_path / "tiny.pt")
    loaded = load_clip("atmflow-tiny-clip", str(tmp_path / "tiny.pt"))[0]
    assert torch.equal(loaded.visual.conv1.weight, clip.visual.conv1.weight + 1.0)


def test_missing_weights_name_model_tag_cache_and_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights("ViT-B-16", "openai", str(tmp_path))
    message = str(err.value)
    assert "model 'ViT-B-16' with pretrained='openai'" in message and str(tmp_path) in message
    assert "timm/vit_base_patch16_clip_224.openai" in message and "never falls back to random" in message
    assert f"open_clip.create_model('ViT-B-16', pretrained='openai', cache_dir='{tmp_path}')" in message
    with pytest.raises(WeightsUnavailableError, match="checkpoint file .*missing.pt not found"):
        resolve_weights("ViT-B-16", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="pretrained='nope' is not a tag of open_clip model 'ViT-B-16'"):
        resolve_weights("ViT-B-16", "nope")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-X'"):
        resolve_weights("ViT-X", "openai")


def test_weights_found_in_the_hub_cache_are_used(tmp_path: Path) -> None:
    """A weights file in the Hugging Face cache layout is found without any network access."""
    snapshot = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "refs").mkdir()
    (tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "refs" / "main").write_text("abc")
    path, pcfg = resolve_weights("ViT-B-16", "openai", str(tmp_path))
    assert path == str(snapshot / "open_clip_model.safetensors") and pcfg["quick_gelu"] is True


def test_a_stand_in_tokenizer_fails_loudly() -> None:
    from atmflow.models.clip import _check_tokenizer

    class TwoTokens:
        vocab_size = 2

    with pytest.raises(WeightsUnavailableError, match="has 2 tokens but its text tower embeds 49408"):
        _check_tokenizer(TwoTokens(), load_clip("atmflow-tiny-clip", "random")[0], "atmflow-tiny-clip")


def test_server_fails_before_any_client_when_weights_are_missing(tmp_path: Path) -> None:
    overrides = {"model-family": "open_clip", "model": "ViT-B-32", "hf-cache-dir": str(tmp_path / "hf"),
                 "tasks": "mnist,digits", "output-dir": str(tmp_path / "out")}
    with pytest.raises(WeightsUnavailableError, match="'ViT-B-32' with pretrained='openai'"):
        run_inprocess(overrides)


def test_client_head_is_zero_shot_from_the_task_class_names() -> None:
    cfg = load_config({**TINY_CLIP, "tasks": "digits,mnist", "train-size": 50, "test-size": 20})
    local = local_task("digits", cfg)
    clip, _, tokenizer = load_clip("atmflow-tiny-clip", "random")
    expected = zeroshot_head(clip, tokenizer, tuple(str(d) for d in range(10)), "digits", CPU)
    assert torch.allclose(local.head.weight, expected.weight) and local.data.train.x.shape[1:] == (3, 32, 32)
    assert isinstance(get_family(cfg), OpenCLIPFamily) and not local.amp


def test_whole_vision_path_on_hub_format_data(tmp_path: Path) -> None:
    """Tiny CLIP, zero-shot heads, two tasks in the hub format with the literature's splits:
    pretrained evaluation, fine-tuning, task vectors, TA merge with lambda on validation, evaluation."""
    dtd = write_image_dataset(tmp_path / "dtd", ["banded", "dotted", "striped"], {"train": 40, "test": 12})
    eurosat = write_image_dataset(tmp_path / "eurosat", ["AnnualCrop", "Forest", "River", "SeaLake"],
                                  {"train": 40, "test": 12})
    overrides: dict[str, Any] = {
        **TINY_CLIP, "tasks": "dtd,eurosat", "strategy": "ta", "budget-epochs": 2, "lambda-grid": "0.5,1.0",
        "train-size": 0, "test-size": 0, "data-sources": f"dtd={dtd},eurosat={eurosat}", "lr": 1e-3,
        "batch-size": 8, "output-dir": str(tmp_path / "out"), "run-name": "clip", "node-wait-s": 5.0,
        "warmup-steps": 2}  # open_clip's recipe (cosine, clip 1.0, training transform); 2 of the 10 steps warm up
    run_inprocess(overrides)
    out = json.loads((tmp_path / "out" / "clip" / "results.json").read_text())
    (record,) = out["rounds"]
    assert sorted(record["tasks"]) == ["dtd", "eurosat"]
    assert all(m["num-examples"] == 36 for m in record["train"].values())  # 40 - floor(10%)
    assert out["config"]["model-family"] == "open_clip"
    for task in ("dtd", "eurosat"):  # fine-tuning learns the colour-coded classes
        assert out["individual"]["tasks"][task]["accuracy"] > out["pretrained"]["tasks"][task]["accuracy"]
    merged = load_file(str(tmp_path / "out" / "clip" / "final_encoder.safetensors"))
    base = load_clip("atmflow-tiny-clip", "random")[0].visual.state_dict()
    assert set(merged) == {f"visual.{k}" for k in base}
    assert any(not torch.equal(merged[f"visual.{k}"], v) for k, v in base.items())


def test_missing_data_fails_the_handshake_before_any_training(tmp_path: Path) -> None:
    dtd = write_image_dataset(tmp_path / "dtd", ["banded", "dotted"], {"train": 20, "test": 4}, size=8)
    overrides = {**TINY_CLIP, "tasks": "dtd,eurosat", "data-sources": f"dtd={dtd},eurosat={tmp_path / 'none'}",
                 "output-dir": str(tmp_path / "out"), "train-size": 0, "test-size": 0, "node-wait-s": 5.0}
    with pytest.raises(RuntimeError) as err:
        run_inprocess(overrides)
    message = str(err.value)
    assert message.startswith("handshake: node") and f"no folder {tmp_path / 'none'}" in message
    assert "load_dataset('tanganke/eurosat').save_to_disk(" in message
    assert not (tmp_path / "out").exists()
