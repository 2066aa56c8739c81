"""Small local image data sets in the Hugging Face hub format (Image + ClassLabel features), for tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def images_for(labels: Sequence[int], size: int, seed: int) -> list[object]:
    """RGB PIL images whose colour depends on the label (learnable), plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for y in labels:
        base = np.array([(37 * y) % 256, (91 * y + 40) % 256, (151 * y + 80) % 256], np.float32)
        pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(pixels))
    return out


def write_image_dataset(path: Path, class_names: Sequence[str], sizes: dict[str, int], *, size: int = 24,
                        image_column: str = "image", label_column: str = "label", seed: int = 0) -> Path:
    """``DatasetDict.save_to_disk(path)`` with the given splits (name -> number of images)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    features = Features({image_column: Image(), label_column: ClassLabel(names=list(class_names))})
    splits = {}
    for i, (split, n) in enumerate(sizes.items()):
        labels = [j % len(class_names) for j in range(n)]
        splits[split] = Dataset.from_dict(
            {image_column: images_for(labels, size, seed + i), label_column: labels}, features=features)
    DatasetDict(splits).save_to_disk(str(path))
    return path
