"""The papers' vision tasks through Hugging Face datasets: formats, split quirks, class names, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from testkit.hf_data import images_for, write_image_dataset

from atmflow.client.task import load_task
from atmflow.config import RunConfig
from atmflow.data.embedded import DataUnavailableError
from atmflow.data.examples import LazyInputs
from atmflow.data.hf_vision import GTSRB_CLASSES, HF_IMAGE_TASKS, ImageColumn, load_hf_image_task
from atmflow.data.tasks import TASK_REGISTRY, load_raw_task
from atmflow.models.templates import TEMPLATES

PAPER_TASKS = ["cars", "dtd", "eurosat", "gtsrb", "mnist-hf", "resisc45", "sun397", "svhn", "cifar100"]
EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]


def test_every_paper_task_is_registered_with_templates() -> None:
    for task in PAPER_TASKS:
        spec = TASK_REGISTRY[task]
        assert spec.modality == "image" and spec.default_source == HF_IMAGE_TASKS[task].hub
        assert TEMPLATES[spec.templates]
    assert TASK_REGISTRY["mnist-hf"].templates == "mnist"
    assert len(TEMPLATES["cifar100"]) == 18 and len(TEMPLATES["resisc45"]) == 18 and len(TEMPLATES["dtd"]) == 8


def test_save_to_disk_dataset_with_official_test_split(tmp_path: Path) -> None:
    names = ["baseball_diamond", "sea_ice", "beach"]
    path = write_image_dataset(tmp_path / "resisc45", names, {"train": 50, "test": 12})
    raw = load_hf_image_task(HF_IMAGE_TASKS["resisc45"], str(path))
    assert raw.class_names == ("baseball diamond", "sea ice", "beach")  # as the literature: _ -> space
    assert isinstance(raw.inputs, ImageColumn) and len(raw.inputs) == 50 and len(raw.test_labels) == 12
    assert raw.labels.tolist()[:4] == [0, 1, 2, 0]
    image = raw.inputs.take([3])[0]
    assert image.size == (24, 24)


def test_literature_splits_on_a_hub_format_dataset(tmp_path: Path) -> None:
    """train-size = 0: validation = floor(10%) of train by torch random_split seed 0, test = all of test."""
    path = write_image_dataset(tmp_path / "svhn", [str(d) for d in range(10)], {"train": 70, "test": 20}, size=16)
    cfg = RunConfig(model_family="open_clip", model="atmflow-tiny-clip", pretrained="random", tasks=("svhn", "dtd"),
                    train_size=0, test_size=0, data_sources=f"svhn={path}", num_workers=2)
    data = load_task("svhn", cfg)
    assert (len(data.train), len(data.validation), len(data.test)) == (63, 7, 20)
    assert isinstance(data.train.x, LazyInputs) and data.train.x[0:4].shape == (4, 3, 32, 32)
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    assert data.validation.y.tolist() == [int(i) % 10 for i in order[63:]]
    assert data.test.y.tolist() == [i % 10 for i in range(20)]
    assert data.class_names == tuple(str(d) for d in range(10))


def test_mobilenet_family_reads_hub_format_tasks(tmp_path: Path) -> None:
    write_image_dataset(tmp_path / "dtd", ["banded", "dotted"], {"train": 30, "test": 10}, size=20)
    data = load_task("dtd", RunConfig(tasks=("dtd", "svhn"), dataset_dir=str(tmp_path), train_size=20, test_size=10))
    assert isinstance(data.test.x, LazyInputs) and data.test.x[[0, 1]].shape == (2, 3, 64, 64)
    assert (len(data.train), len(data.validation), len(data.test)) == (18, 2, 10)


def test_eurosat_without_test_split_and_clip_class_names(tmp_path: Path) -> None:
    path = write_image_dataset(tmp_path / "eurosat", EUROSAT_FOLDERS, {"train": 100}, size=8)
    raw = load_hf_image_task(HF_IMAGE_TASKS["eurosat"], str(path))
    assert raw.class_names[0] == "annual crop land" and raw.class_names[2] == "brushland or shrubland"
    assert raw.class_names[-1] == "lake or sea" and len(raw.class_names) == 10
    assert len(raw.labels) == 90 and len(raw.test_labels) == 10  # a fixed 10% of train is the test split
    held_out = np.sort(torch.randperm(100, generator=torch.Generator().manual_seed(0)).numpy()[:10])
    assert raw.test_labels.tolist() == [int(i) % 10 for i in held_out]


def test_dtd_folds_validation_into_train(tmp_path: Path) -> None:
    sizes = {"train": 10, "validation": 6, "test": 4}
    path = write_image_dataset(tmp_path / "dtd", ["banded", "dotted"], sizes, size=8)
    raw = load_hf_image_task(HF_IMAGE_TASKS["dtd"], str(path))
    assert (len(raw.labels), len(raw.test_labels)) == (16, 4)
    other = load_hf_image_task(HF_IMAGE_TASKS["resisc45"], str(path))  # other tasks ignore 'validation'
    assert len(other.labels) == 10


def test_gtsrb_uses_clip_class_names(tmp_path: Path) -> None:
    path = write_image_dataset(tmp_path / "g", [f"{i:05d}" for i in range(43)], {"train": 43, "test": 43}, size=8)
    raw = load_hf_image_task(HF_IMAGE_TASKS["gtsrb"], str(path))
    assert raw.class_names == GTSRB_CLASSES and raw.class_names[14] == "stop"


def test_imagefolder_and_cifar_columns(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 3)):
        for j, img in enumerate(images_for([k % 2 for k in range(n)], 8, 0)):
            folder = tmp_path / "folder" / split / ("apple" if j % 2 == 0 else "aquarium_fish")
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{j}.png")
    raw = load_hf_image_task(HF_IMAGE_TASKS["resisc45"], str(tmp_path / "folder"))
    assert raw.class_names == ("apple", "aquarium fish") and (len(raw.labels), len(raw.test_labels)) == (6, 3)
    path = write_image_dataset(tmp_path / "c100", ["apple", "aquarium_fish"], {"train": 4, "test": 2}, size=8,
                               image_column="img", label_column="fine_label")
    raw = load_hf_image_task(HF_IMAGE_TASKS["cifar100"], str(path))
    assert raw.class_names == ("apple", "aquarium_fish")  # CIFAR-100 names as the literature uses them


def test_missing_local_dataset_names_path_and_fetch_command(tmp_path: Path) -> None:
    cfg = RunConfig(tasks=("cars", "dtd"), data_sources=f"cars={tmp_path / 'nowhere'}")
    with pytest.raises(DataUnavailableError) as err:
        load_raw_task("cars", cfg)
    message = str(err.value)
    assert f"no folder {tmp_path / 'nowhere'}" in message and "task 'cars'" in message
    assert "load_dataset('tanganke/stanford_cars').save_to_disk(" in message


def test_missing_hub_dataset_is_not_downloaded(tmp_path: Path) -> None:
    cfg = RunConfig(tasks=("svhn", "dtd"), hf_cache_dir=str(tmp_path / "hf"))
    with pytest.raises(DataUnavailableError) as err:
        load_raw_task("svhn", cfg)
    message = str(err.value)
    assert "'ufldl-stanford/svhn' (cropped_digits)" in message and str(tmp_path / "hf") in message
    assert "load_dataset('ufldl-stanford/svhn', 'cropped_digits')" in message and "dataset-dir" in message
