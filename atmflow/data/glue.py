"""The GLUE tasks of paper 000 (CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE), read with ``datasets``.

Where the data come from: a local copy of the Hugging Face hub data set ``nyu-mll/glue`` (its
Parquet files, ``<glue-dir>/<config>/<split>-*.parquet``), fetched once on a machine with network:

    hf download nyu-mll/glue --repo-type dataset --local-dir <glue-dir>

Nothing is downloaded at run time; a missing folder or file raises :class:`DataUnavailableError`
naming it and that command.

Splits. GLUE's test labels are hidden (``label = -1``), so, as in the task-vector literature, the
labelled GLUE *validation* split (``validation_matched`` for MNLI) is our test split, and our
train / validation splits are drawn from GLUE *train* (validation = ``val-fraction`` of it, paper
001 Section 4). Paper 000 reports one number per task, accuracy (Tables 4 and 5, "average test
accuracy"); :func:`glue_metrics` gives it together with GLUE's official metric where that differs
(Matthews correlation for CoLA, F1 of the positive class and accuracy for MRPC and QQP).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atmflow.data.sources import DataUnavailableError
from atmflow.data.text_tasks import RawText

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
    return f"hf download {GLUE_HUB_ID} --repo-type dataset --local-dir {directory or '<glue-dir>'}"


def _read_split(task: str, spec: GlueTask, root: Path, split: str) -> tuple[list, np.ndarray]:
    """(texts or sentence pairs, labels) of one split; rows without a label (-1) are dropped."""
    files = sorted((root / spec.config).glob(f"{split}-*.parquet"))
    if not files:
        raise DataUnavailableError(
            f"GLUE task {task!r}: no {spec.config}/{split}-*.parquet in glue-dir={str(root)!r}. "
            f"Fetch GLUE on a machine with network with: {fetch_command(str(root))}")
    from datasets import ClassLabel, load_dataset

    data = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    missing = [c for c in (*spec.columns, "label") if c not in data.column_names]
    if missing:
        raise DataUnavailableError(f"GLUE task {task!r}: {files[0]} lacks columns {missing} "
                                   f"(has {data.column_names}); is it GLUE's {spec.config!r} configuration?")
    feature = data.features["label"]
    if isinstance(feature, ClassLabel) and tuple(feature.names) != spec.class_names:
        raise DataUnavailableError(f"GLUE task {task!r}: {files[0]} has classes {feature.names}, "
                                   f"expected {list(spec.class_names)}")
    labels = np.asarray(data["label"], dtype=np.int64)
    keep = np.flatnonzero(labels >= 0)
    if len(keep) == 0:
        raise DataUnavailableError(f"GLUE task {task!r}: split {split!r} has no labels (GLUE's test splits "
                                   "hide them); evaluate on validation")
    columns = [data[c] for c in spec.columns]
    texts = [columns[0][i] for i in keep] if len(columns) == 1 else [(columns[0][i], columns[1][i]) for i in keep]
    return texts, labels[keep]


def load_glue(task: str, directory: str) -> RawText:
    """Task ``glue-*``: GLUE train as the pool of train / validation, GLUE validation as the test split."""
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; available: {sorted(GLUE_TASKS)}")
    if not directory:
        raise DataUnavailableError(f"GLUE task {task!r} needs glue-dir, a local copy of the hub data set "
                                   f"{GLUE_HUB_ID}. Fetch it on a machine with network with: "
                                   f"{fetch_command('')}, then set glue-dir")
    root = Path(directory)
    if not root.is_dir():
        raise DataUnavailableError(f"glue-dir={directory!r} does not exist. Fetch GLUE on a machine with "
                                   f"network with: {fetch_command(directory)}")
    spec = GLUE_TASKS[task]
    texts, labels = _read_split(task, spec, root, "train")
    test_texts, test_labels = _read_split(task, spec, root, spec.test_split)
    return RawText(texts, labels, len(spec.class_names), test_texts, test_labels, spec.class_names)


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
