"""Tiny random-weight image models saved to folders as a user would bring them (no download): a torchvision
resnet18 state dict, a transformers ViT and a CLIP checkpoint with their image processors, and a Hugging Face
hub cache laid out by hand."""

from __future__ import annotations

from pathlib import Path

import torch


def torchvision_weights(path: Path, model: str = "resnet18") -> Path:
    """A torchvision model's state dict (random weights, 10-class final layer) written with ``torch.save``."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(model, num_classes=10).state_dict(), path)
    return path


def _processor(folder: Path, side: int) -> None:
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        str(folder))


def tiny_vit(folder: Path, side: int = 16) -> Path:
    """A 2-layer ViT (hidden size 16, 8-pixel patches) and its image processor."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=side, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    _processor(folder, side)
    return folder


def tiny_clip(folder: Path, side: int = 16) -> Path:
    """A two-tower CLIP checkpoint (both towers tiny) and its image processor."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": 100}, projection_dim=8,
                        vision_config={**tower, "image_size": side, "patch_size": 8})
    CLIPModel(config).save_pretrained(str(folder))
    _processor(folder, side)
    return folder


def hub_cache_entry(cache: Path, hub_id: str, source: Path) -> Path:
    """``source``'s files as the snapshot of ``hub_id`` in a Hugging Face hub cache at ``cache``."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot
