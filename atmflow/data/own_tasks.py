"""Your own tasks: task definitions with any name, read from the run config's ``task-file``.

The task file is TOML with one table per task (docs/data.md has a complete example)::

    [tasks.leaves]
    modality = "image"                  # image | text
    source = "data/leaves"              # a folder (relative to the task file's folder) or a hub name
    classes = ["healthy", "rust"]       # optional: names in label order
    templates = ["a photo of a {} leaf."]  # optional: zero-shot prompts (open_clip)

``source`` is one of

* an image folder: ``train/<class>/*`` and ``test/<class>/*`` (classes: the folder names, sorted);
* a folder of ``train`` and ``test`` files in Parquet (``.parquet``), CSV (``.csv``) or JSON Lines
  (``.jsonl``), e.g. ``train.csv`` and ``test.csv``;
* a ``DatasetDict.save_to_disk`` folder (it holds ``dataset_dict.json``);
* a Hugging Face hub name, read from the local Hugging Face cache only (``hf-cache-dir``).

Optional keys: ``image-column`` (default ``image``), ``text-column`` (``text``), ``label-column``
(``label``), ``classes`` (default: the folder names, the ``ClassLabel`` names, or the sorted label
values), ``templates`` (default ``["a photo of a {}."]`` for images), ``test-fraction`` (a source
without a test split: this fraction of train, drawn with numpy seed 0, becomes the test split; without
it such a source is an error). Labels are the class names (strings) or their indices ``0 .. K-1``.
"""

from __future__ import annotations

import io
import json
import tomllib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atmflow.data.embedded import DataUnavailableError, RawTask
from atmflow.paths import is_local_path

DEFAULT_IMAGE_TEMPLATES = ("a photo of a {}.",)
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class TaskFileError(ValueError):
    """A task file that cannot be read; the message names the file, the task and the key."""


class OwnTask(BaseModel):
    """One ``[tasks.<name>]`` table of a task file (see module docstring)."""

    model_config = ConfigDict(alias_generator=lambda n: n.replace("_", "-"), extra="forbid", frozen=True)

    modality: Literal["image", "text"]
    source: str = Field(min_length=1)
    image_column: str = "image"
    text_column: str = "text"
    label_column: str = "label"
    classes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    test_fraction: float = Field(0.0, ge=0, lt=1)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value and len(value) < 2:
            raise ValueError("a task needs at least 2 classes")
        if len(set(value)) != len(value):
            raise ValueError(f"a class is listed twice: {list(value)}")
        return value

    @field_validator("templates")
    @classmethod
    def _placeholders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in value if "{}" not in t]
        if bad:
            raise ValueError(f"every template needs '{{}}' where the class name goes: {bad}")
        return value

    @property
    def input_column(self) -> str:
        return self.image_column if self.modality == "image" else self.text_column

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        return self.templates or (DEFAULT_IMAGE_TEMPLATES if self.modality == "image" else ())


class TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: dict[str, OwnTask]


def resolve_source(source: str, task_file: Path) -> str:
    """A local ``source`` as an absolute path: relative ones are relative to the task file's folder (a
    relative source that starts with ``.`` or exists there); anything else is a hub name."""
    path = Path(source).expanduser()
    if path.is_absolute():
        return str(path)
    local = task_file.parent / source
    return str(local.resolve()) if source.startswith(".") or local.exists() else source


def read_task_file(path: str) -> dict[str, OwnTask]:
    """The task definitions of ``path`` (an absolute path; cached until the file changes)."""
    file = Path(path)
    if not file.is_file():
        raise TaskFileError(f"task-file {path!r} not found: write it (docs/data.md, 'Your own tasks') or fix "
                            "the run config's task-file (a relative path is relative to the current folder; "
                            "in atmflow validate, to --project)")
    return _read(str(file), file.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read(path: str, _mtime: int) -> dict[str, OwnTask]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise TaskFileError(f"task-file {path}: not valid TOML ({err})") from None
    try:
        parsed = TaskFile.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"]]
            where = f"[tasks.{loc[1]}] {'.'.join(loc[2:])}" if loc[:1] == ["tasks"] and len(loc) > 1 else ".".join(loc)
            lines.append(f"  {where or 'file'}: {e['msg'].removeprefix('Value error, ')}")
        raise TaskFileError(f"task-file {path}:\n" + "\n".join(lines)) from None
    if not parsed.tasks:
        raise TaskFileError(f"task-file {path} defines no task; add a [tasks.<name>] table")
    return {name: t.model_copy(update={"source": resolve_source(t.source, Path(path))})
            for name, t in parsed.tasks.items()}


# --- loading ----------------------------------------------------------------------------------------------------


class ImageFiles:
    """Images read from files (or bytes) only when taken (an :class:`~atmflow.data.examples.ExampleColumn`)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, indices: Sequence[int]) -> list[Any]:
        return [_open_image(self.items[i]) for i in indices]


def _open_image(item: Any) -> Any:
    from PIL import Image

    if isinstance(item, dict):  # a Hugging Face Image value: {"bytes": ..., "path": ...}
        item = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
    elif isinstance(item, bytes):
        item = io.BytesIO(item)
    with Image.open(item) as im:
        return im.convert("RGB")


def _image_folder(name: str, root: Path) -> dict[str, tuple[list[Any], list[Any]]]:
    """``{split: (image paths, class-folder labels)}`` of an image folder."""
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        paths, labels = [], []
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [cls.name] * len(files)
        out[split] = (paths, labels)
    return out


def _table_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split in ("train", "test"):
        hits = [root / f"{split}{s}" for s in TABLE_SUFFIXES if (root / f"{split}{s}").is_file()]
        if len(hits) > 1:
            raise DataUnavailableError(f"{root}: several {split} files {[h.name for h in hits]}; keep one")
        if hits:
            found[split] = hits[0]
    return found


def _read_table(path: Path) -> Any:
    import pandas as pd

    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_json(path, lines=True)


def _columns(name: str, spec: OwnTask, columns: Sequence[str], where: str) -> None:
    missing = [c for c in (spec.input_column, spec.label_column) if c not in columns]
    if missing:
        key = "image-column" if spec.modality == "image" else "text-column"
        raise DataUnavailableError(
            f"task {name!r}: {where} has no column(s) {missing} (columns: {list(columns)}); name the right ones "
            f"with {key} / label-column in [tasks.{name}] of the task file")


def _table_splits(name: str, spec: OwnTask, files: dict[str, Path]) -> dict[str, tuple[list[Any], list[Any]]]:
    out = {}
    for split, path in files.items():
        frame = _read_table(path)
        _columns(name, spec, list(frame.columns), str(path))
        inputs = list(frame[spec.input_column])
        if spec.modality == "image":  # file names are relative to the table's folder
            inputs = [str(path.parent / v) if isinstance(v, str) and not Path(v).is_absolute() else v
                      for v in inputs]
        out[split] = (inputs, list(frame[spec.label_column]))
    return out


def _hf_splits(name: str, spec: OwnTask, source: str,
               cache_dir: str) -> tuple[dict[str, tuple[Any, list[Any]]], tuple[str, ...]]:
    """Splits of a ``save_to_disk`` folder or a cached hub data set, and the ClassLabel names if any."""
    import datasets

    from atmflow.data.hf_vision import ImageColumn, hub_offline

    try:
        with hub_offline():
            dd = (datasets.load_from_disk(source) if is_local_path(source)
                  else datasets.load_dataset(source, cache_dir=cache_dir or None))
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise DataUnavailableError(
            f"task {name!r}: data set {source!r} is not in the Hugging Face cache "
            f"{cache_dir or datasets.config.HF_DATASETS_CACHE} ({type(err).__name__}), and no folder of that name is "
            f"next to the task file; fix source, or fetch it on a machine with "
            f"network: python -c \"from datasets import load_dataset; load_dataset({source!r}).save_to_disk("
            f"'<dir>')\" and set source = '<dir>'") from err
    if not isinstance(dd, datasets.DatasetDict):
        raise DataUnavailableError(f"task {name!r}: {source} holds a single split; save a DatasetDict with "
                                   "'train' and 'test' (or set test-fraction)")
    out: dict[str, tuple[Any, list[Any]]] = {}
    names: tuple[str, ...] = ()
    for split in ("train", "test"):
        if split not in dd:
            continue
        ds = dd[split]
        _columns(name, spec, list(ds.features), f"{source} ({split})")
        feature = ds.features[spec.label_column]
        if type(feature).__name__ == "ClassLabel":
            names = tuple(feature.names)
        inputs = ImageColumn(ds, spec.image_column) if spec.modality == "image" else list(ds[spec.text_column])
        out[split] = (inputs, list(ds[spec.label_column]))
    return out, names


def _class_names(name: str, spec: OwnTask, values: list[Any], known: tuple[str, ...]) -> tuple[str, ...]:
    """The classes in label order: ``classes``, else the data's own names, else the sorted label values."""
    if spec.classes:
        if known and tuple(known) != spec.classes:
            raise DataUnavailableError(f"task {name!r}: classes = {list(spec.classes)} in the task file, but the "
                                       f"data's labels are {list(known)}; fix classes or remove it")
        return spec.classes
    if known:
        return known
    return tuple(str(v) for v in sorted(set(values), key=lambda v: (isinstance(v, str), v)))


def _encode(name: str, values: list[Any], classes: tuple[str, ...], split: str) -> np.ndarray:
    """Label values (class names or indices) -> int64 labels ``0 .. K-1``."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for k, v in enumerate(values):
        if isinstance(v, str | np.str_) and str(v) in index:
            out[k] = index[str(v)]
        elif isinstance(v, int | np.integer) and str(v) in index:
            out[k] = index[str(v)]
        elif isinstance(v, int | np.integer) and 0 <= int(v) < len(classes) and not _numeric_names(classes):
            out[k] = int(v)
        else:
            raise DataUnavailableError(
                f"task {name!r}: label {v!r} of the {split} split is not one of the classes {list(classes)}; "
                "fix classes in the task file (names in label order) or the data")
    return out


def _numeric_names(classes: tuple[str, ...]) -> bool:
    return all(c.lstrip("-").isdigit() for c in classes)


def _hold_out(inputs: Any, labels: np.ndarray, fraction: float) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """(train inputs, train labels, test inputs, test labels): ``fraction`` of train as test (seed 0)."""
    from atmflow.data.examples import take

    order = np.random.default_rng(0).permutation(len(labels))
    n_test = int(round(fraction * len(labels)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return _subset(inputs, train, take), labels[train], _subset(inputs, test, take), labels[test]


def _subset(inputs: Any, idx: np.ndarray, take: Any) -> Any:
    if isinstance(inputs, ImageFiles):
        return ImageFiles([inputs.items[i] for i in idx])
    if hasattr(inputs, "dataset") and hasattr(inputs, "column"):  # hf_vision.ImageColumn
        return type(inputs)(inputs.dataset.select(idx), inputs.column)
    return take(inputs, idx)


def _splits(name: str, spec: OwnTask, source: str,
            cache_dir: str) -> tuple[dict[str, tuple[Any, list[Any]]], tuple[str, ...]]:
    if not is_local_path(source):
        return _hf_splits(name, spec, source, cache_dir)
    root = Path(source)
    if not root.is_dir():
        raise DataUnavailableError(f"task {name!r}: no folder {root} (source in [tasks.{name}] of the task file, or "
                                   f"the node's dataset-path); create it or fix the path")
    if (root / "dataset_dict.json").is_file():
        return _hf_splits(name, spec, str(root), cache_dir)
    tables = _table_files(root)
    if tables:
        return _table_splits(name, spec, tables), ()
    if spec.modality == "image" and (root / "train").is_dir():
        return _image_folder(name, root), ()
    raise DataUnavailableError(
        f"task {name!r}: {root} holds none of: an image folder train/<class>/* (modality image), train and test "
        f"files ({', '.join('train' + s for s in TABLE_SUFFIXES)}), or a DatasetDict.save_to_disk folder")


def load_own_task(name: str, spec: OwnTask, source: str, cache_dir: str = "") -> RawTask:
    """The task's :class:`RawTask`, with every check of ``atmflow validate`` (columns, classes, splits)."""
    splits, known = _splits(name, spec, source, cache_dir)
    if "train" not in splits:
        raise DataUnavailableError(f"task {name!r}: {source} has no train split (a train folder or train file)")
    has_test = "test" in splits
    if not has_test and not spec.test_fraction:
        raise DataUnavailableError(f"task {name!r}: {source} has no test split; add one, or set test-fraction "
                                   f"(e.g. 0.2) in [tasks.{name}] of the task file")
    if has_test and spec.test_fraction:
        raise DataUnavailableError(f"task {name!r}: {source} has a test split, so test-fraction does not apply; "
                                   "remove test-fraction")
    values = list(splits["train"][1]) + (list(splits["test"][1]) if has_test else [])
    classes = _class_names(name, spec, values, known)
    if len(classes) < 2:
        raise DataUnavailableError(f"task {name!r}: {source} has {len(classes)} class(es) {list(classes)}; "
                                   "a classification task needs at least 2")
    raw_inputs, raw_labels = splits["train"]
    inputs = ImageFiles(raw_inputs) if spec.modality == "image" and isinstance(raw_inputs, list) else raw_inputs
    labels = _encode(name, list(raw_labels), classes, "train")
    if has_test:
        t_inputs, t_values = splits["test"]
        test_inputs = ImageFiles(t_inputs) if spec.modality == "image" and isinstance(t_inputs, list) else t_inputs
        test_labels = _encode(name, list(t_values), classes, "test")
    else:
        inputs, labels, test_inputs, test_labels = _hold_out(inputs, labels, spec.test_fraction)
    for split, y in (("train", labels), ("test", test_labels)):
        if len(y) == 0:
            raise DataUnavailableError(f"task {name!r}: the {split} split of {source} is empty; add examples")
    unused = [c for i, c in enumerate(classes) if not np.any(labels == i)]
    if unused:
        raise DataUnavailableError(f"task {name!r}: class(es) {unused} of classes = {list(classes)} have no "
                                   f"training example in {source}; fix classes in the task file or add examples")
    return RawTask(inputs, labels, len(classes), test_inputs, test_labels, classes)


def describe(spec: OwnTask) -> str:
    """One line about an own task (``about`` in the registry)."""
    return f"own task ({spec.modality}) from {json.dumps(spec.source)}"
