"""Own tasks from a ``task-file``: every source kind loads through RawTask / make_splits, mixes with built-in
tasks, and each mistake is named by task and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit.own_data import image_folder, write_task_file

from atmflow.config import ConfigError, load_config
from atmflow.data.embedded import DataUnavailableError
from atmflow.data.tasks import load_raw_task, task_spec


def _cfg(task_file: Path, tasks: str, **extra: object):  # noqa: ANN202
    return load_config({"task-file": str(task_file), "tasks": tasks, **extra})


def test_image_folder_task_mixes_with_builtin(tmp_path: Path) -> None:
    image_folder(tmp_path / "shapes", {"circle": 6, "square": 5}, test=3)
    tf = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image", "source": "shapes",
                                                              "templates": ["a drawing of a {}."]}})
    cfg = _cfg(tf, "shapes,digits")
    raw = load_raw_task("shapes", cfg)
    assert raw.class_names == ("circle", "square") and raw.num_classes == 2
    assert len(raw.labels) == 11 and len(raw.test_labels) == 6
    assert raw.inputs.take([0])[0].mode == "RGB"
    spec = task_spec("shapes", cfg.task_file_path)
    assert spec.prompt_templates == ("a drawing of a {}.",) and spec.modality == "image"


def test_csv_jsonl_parquet_text_tasks(tmp_path: Path) -> None:
    import pandas as pd

    train = pd.DataFrame({"sentence": ["good", "bad", "fine", "awful"], "y": ["pos", "neg", "pos", "neg"]})
    test = pd.DataFrame({"sentence": ["great", "poor"], "y": ["pos", "neg"]})
    for kind in ("csv", "jsonl", "parquet"):
        folder = tmp_path / kind
        folder.mkdir()
        for name, frame in (("train", train), ("test", test)):
            path = folder / f"{name}.{kind}"
            if kind == "csv":
                frame.to_csv(path, index=False)
            elif kind == "jsonl":
                frame.to_json(path, orient="records", lines=True)
            else:
                frame.to_parquet(path)
    tasks = {k: {"modality": "text", "source": k, "text-column": "sentence", "label-column": "y",
                 "classes": ["neg", "pos"]} for k in ("csv", "jsonl", "parquet")}
    tf = write_task_file(tmp_path / "tasks.toml", tasks)
    cfg = _cfg(tf, "csv,jsonl,parquet", **{"model-family": "hf-text"})
    for k in tasks:
        raw = load_raw_task(k, cfg)
        assert raw.inputs == ["good", "bad", "fine", "awful"]
        assert raw.labels.tolist() == [1, 0, 1, 0] and raw.test_labels.tolist() == [1, 0]


def test_save_to_disk_source_and_test_fraction(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["no", "yes"])})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features)})
    dd.save_to_disk(str(tmp_path / "saved"))
    tf = write_task_file(tmp_path / "tasks.toml", {"saved": {"modality": "text", "source": "saved",
                                                             "test-fraction": 0.25}})
    raw = load_raw_task("saved", _cfg(tf, "saved,rt-polarity", **{"model-family": "hf-text"}))
    assert raw.class_names == ("no", "yes")
    assert len(raw.labels) == 15 and len(raw.test_labels) == 5


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"modality": "sound", "source": "x"}, "[tasks.bad] modality"),
        ({"modality": "image"}, "[tasks.bad] source: Field required"),
        ({"modality": "image", "source": "x", "colour": 1}, "[tasks.bad] colour: Extra inputs"),
        ({"modality": "image", "source": "x", "templates": ["no placeholder"]}, "[tasks.bad] templates"),
    ],
)
def test_task_file_errors_name_task_and_key(tmp_path: Path, table: dict[str, object], expected: str) -> None:
    tf = write_task_file(tmp_path / "tasks.toml", {"bad": table})
    with pytest.raises(ConfigError) as err:
        _cfg(tf, "bad,digits")
    assert expected in str(err.value) and str(tf) in str(err.value)


def test_misspelt_own_task_suggests_the_name(tmp_path: Path) -> None:
    tf = write_task_file(tmp_path / "tasks.toml", {"leaves": {"modality": "image", "source": "leaves"}})
    with pytest.raises(ConfigError, match="unknown task 'leafs' \\(did you mean 'leaves'\\?\\)"):
        _cfg(tf, "leafs,digits")


def test_builtin_name_cannot_be_redefined(tmp_path: Path) -> None:
    tf = write_task_file(tmp_path / "tasks.toml", {"digits": {"modality": "image", "source": "x"}})
    with pytest.raises(ConfigError, match=r"\['digits'\] are built-in tasks"):
        _cfg(tf, "digits,mnist")


@pytest.mark.parametrize(
    ("layout", "table", "expected"),
    [
        ("none", {}, "no folder"),
        ("one-class", {}, "1 class(es)"),
        ("no-test", {}, "has no test split; add one, or set test-fraction"),
        ("ok", {"classes": ["a", "b", "c"]}, "class(es) ['c'] of classes"),
        ("ok", {"classes": ["x", "y"]}, "not one of the classes"),
        ("empty-test", {}, "the test split"),
    ],
)
def test_data_problems_are_named(tmp_path: Path, layout: str, table: dict[str, object], expected: str) -> None:
    root = tmp_path / "d"
    if layout == "one-class":
        image_folder(root, {"a": 3}, test=1)
    elif layout == "no-test":
        image_folder(root, {"a": 3, "b": 3}, test=0)
    elif layout == "ok":
        image_folder(root, {"a": 3, "b": 3}, test=1)
    elif layout == "empty-test":
        image_folder(root, {"a": 3, "b": 3}, test=0)
        (root / "test" / "a").mkdir(parents=True)
    tf = write_task_file(tmp_path / "tasks.toml", {"mine": {"modality": "image", "source": str(root), **table}})
    cfg = _cfg(tf, "mine,digits")
    with pytest.raises(DataUnavailableError) as err:
        load_raw_task("mine", cfg)
    assert expected in str(err.value) and "'mine'" in str(err.value)


def test_integer_labels_with_class_names(tmp_path: Path) -> None:
    import pandas as pd

    folder = tmp_path / "t"
    folder.mkdir()
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 1]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text": ["d", "e"], "label": [1, 0]}).to_csv(folder / "test.csv", index=False)
    tf = write_task_file(tmp_path / "tasks.toml", {"t": {"modality": "text", "source": "t", "classes": ["no", "yes"]}})
    raw = load_raw_task("t", _cfg(tf, "t,rt-polarity", **{"model-family": "hf-text"}))
    assert raw.labels.tolist() == [0, 1, 1] and raw.class_names == ("no", "yes")
    assert isinstance(raw.labels, np.ndarray) and Image is not None


def test_zero_shot_head_uses_the_own_task_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip's zero-shot head of an own task prompts with its ``classes`` and ``templates``."""
    from types import SimpleNamespace

    import torch

    from atmflow.models import clip

    pytest.importorskip("open_clip")
    prompted: list[str] = []

    class FakeClip(torch.nn.Module):
        logit_scale = torch.tensor(0.0)

        def encode_text(self, tokens: Tokens) -> torch.Tensor:
            prompted.extend(tokens.texts)
            return torch.ones(len(tokens.texts), 4)

    class Tokens:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

        def to(self, _device: torch.device) -> Tokens:
            return self

    monkeypatch.setattr(clip.OpenCLIPFamily, "_loaded", lambda self: (FakeClip(), None, Tokens))
    tf = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image", "source": "x",
                                                              "templates": ["a drawing of a {}.", "a {} shape."]}})
    cfg = _cfg(tf, "shapes,cars", **{"model-family": "open_clip"})
    family = clip.OpenCLIPFamily.__new__(clip.OpenCLIPFamily)
    family.cfg = cfg
    head = family.special_head("zeroshot", SimpleNamespace(name="shapes", class_names=("circle", "square")),
                               torch.device("cpu"))
    assert prompted == ["a drawing of a circle.", "a circle shape.", "a drawing of a square.", "a square shape."]
    assert head.weight.shape == (2, 4)
