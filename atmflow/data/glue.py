"""The GLUE tasks of paper 000 (CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE), read with ``datasets``.

Where the data come from (the task's location, :mod:`atmflow.data.tasks`): by default the hub data
set ``nyu-mll/glue`` read from the local Hugging Face cache, or a local copy of its Parquet files
(``<dir>/<config>/<split>-*.parquet``), fetched once on a machine with network with

    hf download nyu-mll/glue --repo-type dataset --local-dir <dir>

and given as ``data-sources = "glue-cola=<dir>,glue-rte=<dir>,..."``. Nothing is downloaded at run
time; missing data raise :class:`DataUnavailableError` naming what and where, and that command.

Splits. GLUE's test labels are hidden (``label = -1``), so, as in the task-vector literature, the
labelled GLUE *validation* split (``validation_matched`` for MNLI) is our test split, and our
train / validation splits are drawn from GLUE *train* (validation = ``val-fraction`` of it, paper
001 Section 4). Paper 000 reports one number per task, accuracy (Tables 4 and 5, "average test
accuracy"); :func:`glue_metrics` gives it together with GLUE's official metric where that differs
(Matthews correlation for CoLA, F1 of the positive class and accuracy for MRPC and QQP), which every
GLUE node also reports (:func:`atmflow.client.evaluation.official_metrics`). STS-B is not here: it is a
regression task (Pearson / Spearman correlation), and atmflow's heads and losses are classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atmflow.data.embedded import DataUnavailableError, RawTask
from atmflow.paths import is_local_path

GLUE_HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    config: str  # the hub data set's configuration (sub-folder)
    columns: tuple[str, ...]  # one text column, or the two of a sentence pair
    class_names: tuple[str, ...]  # the ClassLabel names, in label order
    test_split: str = "validation"  # the labelled GLUE split we evaluate on
    metric: str = "accuracy"  # GLUE's official metric besides accuracy: "matthews" or "f1"


GLUE_TASKS: dict[str, GlueTask] = {
    "glue-cola": GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), metric="matthews"),
    "glue-sst2": GlueTask("sst2", ("sentence",), ("negative", "positive")),
    "glue-mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), metric="f1"),
    "glue-qqp": GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), metric="f1"),
    "glue-mnli": GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                          test_split="validation_matched"),
    "glue-qnli": GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment")),
    "glue-rte": GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
}


def fetch_command(directory: str) -> str:
    return f"hf download {GLUE_HUB_ID} --repo-type dataset --local-dir {directory or '<dir>'}"


def _open_local(task: str, spec: GlueTask, root: Path) -> Any:
    """The Parquet files of ``<root>/<config>/`` (or of ``root`` itself) as a ``DatasetDict``."""
    from datasets import load_dataset

    folder = root / spec.config if (root / spec.config).is_dir() else root
    files = {split: sorted(str(f) for f in folder.glob(f"{split}-*.parquet")) for split in ("train", spec.test_split)}
    for split, found in files.items():
        if not found:
            raise DataUnavailableError(
                f"GLUE task {task!r}: no {split}-*.parquet in {folder} (the hub layout is "
                f"<dir>/{spec.config}/{split}-00000-of-00001.parquet). Fetch GLUE on a machine with network "
                f"with: {fetch_command(str(root))}")
    return load_dataset("parquet", data_files=files)


def _open_hub(task: str, spec: GlueTask, source: str, cache_dir: str) -> Any:
    """The hub data set ``source`` from the local Hugging Face cache only (never downloads)."""
    from datasets import load_dataset

    from atmflow.data.hf_vision import hub_offline

    try:
        with hub_offline():
            return load_dataset(source, spec.config, cache_dir=cache_dir or None)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        import datasets

        looked = cache_dir or datasets.config.HF_DATASETS_CACHE
        raise DataUnavailableError(
            f"GLUE task {task!r}: data set {source!r} ({spec.config}) is not in the Hugging Face cache {looked} "
            f"(atmflow reads hub data sets offline; {type(err).__name__}). Fetch it on a machine with network "
            f"with: {fetch_command('<dir>/glue')} and set data-sources='{task}=<dir>/glue' (or dataset-dir='<dir>' "
            f"with the files in <dir>/{task})") from err


def _split(task: str, spec: GlueTask, data: Any, split: str, where: str) -> tuple[list, np.ndarray]:
    """(texts or sentence pairs, labels) of one split; rows without a label (-1) are dropped."""
    from datasets import ClassLabel

    if split not in data:
        raise DataUnavailableError(f"GLUE task {task!r}: {where} has no split {split!r} (has {list(data)})")
    data = data[split]
    missing = [c for c in (*spec.columns, "label") if c not in data.column_names]
    if missing:
        raise DataUnavailableError(f"GLUE task {task!r}: {where} lacks columns {missing} "
                                   f"(has {data.column_names}); is it GLUE's {spec.config!r} configuration?")
    feature = data.features["label"]
    if isinstance(feature, ClassLabel) and tuple(feature.names) != spec.class_names:
        raise DataUnavailableError(f"GLUE task {task!r}: {where} has classes {feature.names}, "
                                   f"expected {list(spec.class_names)}")
    labels = np.asarray(data["label"], dtype=np.int64)
    keep = np.flatnonzero(labels >= 0)
    if len(keep) == 0:
        raise DataUnavailableError(f"GLUE task {task!r}: split {split!r} of {where} has no labels (GLUE's test "
                                   "splits hide them); evaluate on validation")
    columns = [data[c] for c in spec.columns]
    texts = [columns[0][i] for i in keep] if len(columns) == 1 else [(columns[0][i], columns[1][i]) for i in keep]
    return texts, labels[keep]


def load_glue(task: str, source: str = GLUE_HUB_ID, cache_dir: str = "") -> RawTask:
    """Task ``glue-*``: GLUE train as the pool of train / validation, GLUE validation as the test split.

    ``source``: a local folder (the hub data set's files: ``<source>/<config>/<split>-*.parquet``, or
    the configuration's folder itself), or a hub name read from the local cache (``cache_dir``)."""
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; available: {sorted(GLUE_TASKS)}")
    spec = GLUE_TASKS[task]
    if is_local_path(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DataUnavailableError(f"GLUE task {task!r}: folder {root} does not exist. Fetch GLUE on a "
                                       f"machine with network with: {fetch_command(str(root))}")
        data, where = _open_local(task, spec, root), str(root)
    else:
        data, where = _open_hub(task, spec, source, cache_dir), f"hub data set {source!r}"
    texts, labels = _split(task, spec, data, "train", where)
    test_texts, test_labels = _split(task, spec, data, spec.test_split, where)
    return RawTask(texts, labels, len(spec.class_names), test_texts, test_labels, spec.class_names)


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (paper 000's metric) and GLUE's official metric of ``task`` where it differs.

    CoLA: Matthews correlation ``(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``;
    MRPC, QQP: F1 of the positive class (label 1, "equivalent" / "duplicate").
    """
    from sklearn.metrics import f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    metrics = {"accuracy": float((predictions == labels).mean())}
    metric = GLUE_TASKS[task].metric
    if metric == "matthews":
        metrics["matthews"] = float(matthews_corrcoef(labels, predictions))
    elif metric == "f1":
        metrics["f1"] = float(f1_score(labels, predictions, pos_label=1, zero_division=0.0))
    return metrics
