"""GLUE loaders and metrics on small local data sets in the hub's format (offline)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from atmflow.data.embedded import DataUnavailableError
from atmflow.data.glue import GLUE_TASKS, glue_metrics, load_glue

SENTENCES = ["the cat sat", "a dog barked loudly", "colourless green ideas", "we ate", "she read a book",
             "books the read she", "it rained all day", "dogs cats and birds"]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_glue(root: Path, task: str, split: str, n: int, *, labelled: bool = True, names=None) -> None:
    """One split of a GLUE configuration as the hub stores it: ``<config>/<split>-00000-of-00001.parquet``
    with the same columns, an ``idx`` column and the ClassLabel names in the Parquet metadata."""
    from datasets import ClassLabel, Dataset, Features, Value

    spec = GLUE_TASKS[task]
    names = names or list(spec.class_names)
    columns = {c: [f"{split} {SENTENCES[(i + k) % len(SENTENCES)]} {i}" for i in range(n)]
               for k, c in enumerate(spec.columns)}
    labels = [i % len(names) if labelled else -1 for i in range(n)]
    features = Features({**{c: Value("string") for c in spec.columns}, "label": ClassLabel(names=names),
                         "idx": Value("int32")})
    data = Dataset.from_dict({**columns, "label": labels, "idx": list(range(n))}, features=features)
    (root / spec.config).mkdir(parents=True, exist_ok=True)
    data.to_parquet(str(root / spec.config / f"{split}-00000-of-00001.parquet"))


def test_single_sentence_task_train_pool_and_validation_as_test(tmp_path: Path) -> None:
    write_glue(tmp_path, "glue-cola", "train", 40)
    write_glue(tmp_path, "glue-cola", "validation", 12)
    write_glue(tmp_path, "glue-cola", "test", 9, labelled=False)  # hidden labels: never read
    raw = load_glue("glue-cola", str(tmp_path))
    assert raw.class_names == ("unacceptable", "acceptable") and raw.num_classes == 2
    assert len(raw.inputs) == 40 and raw.inputs[3] == "train we ate 3"
    assert raw.labels.tolist() == [i % 2 for i in range(40)]
    assert len(raw.test_inputs) == 12 and raw.test_labels.tolist() == [i % 2 for i in range(12)]


def test_sentence_pairs_and_mnli_matched_validation(tmp_path: Path) -> None:
    write_glue(tmp_path, "glue-mnli", "train", 30)
    write_glue(tmp_path, "glue-mnli", "validation_matched", 9)
    write_glue(tmp_path, "glue-mnli", "validation_mismatched", 5)
    raw = load_glue("glue-mnli", str(tmp_path))
    assert raw.inputs[0] == ("train the cat sat 0", "train a dog barked loudly 0")  # (premise, hypothesis)
    assert len(raw.test_inputs) == 9 and set(raw.labels.tolist()) == {0, 1, 2}


def test_unlabelled_rows_are_dropped_and_an_unlabelled_split_is_refused(tmp_path: Path) -> None:
    write_glue(tmp_path, "glue-rte", "train", 10)
    write_glue(tmp_path, "glue-rte", "validation", 6, labelled=False)
    with pytest.raises(DataUnavailableError, match="no labels"):
        load_glue("glue-rte", str(tmp_path))


def test_missing_data_names_what_where_and_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match=r"'nyu-mll/glue' \(sst2\) is not in the Hugging Face cache .*"
                                                   "empty-cache.*hf download nyu-mll/glue --repo-type dataset"):
        load_glue("glue-sst2", "nyu-mll/glue", str(tmp_path / "empty-cache"))
    with pytest.raises(DataUnavailableError, match="does not exist.*hf download nyu-mll/glue"):
        load_glue("glue-sst2", str(tmp_path / "nowhere"))
    write_glue(tmp_path, "glue-sst2", "train", 10)
    with pytest.raises(DataUnavailableError, match=r"no validation-\*\.parquet in .*sst2.*hf download"):
        load_glue("glue-sst2", str(tmp_path))


def test_glue_split_logic_through_the_task_registry(tmp_path: Path) -> None:
    """data-sources points a task at the local copy; train / validation come from GLUE train,
    the test split is GLUE validation (its test labels are hidden)."""
    from atmflow.config import load_config
    from atmflow.data.splits import make_splits
    from atmflow.data.tasks import load_raw_task

    write_glue(tmp_path, "glue-cola", "train", 60)
    write_glue(tmp_path, "glue-cola", "validation", 30)
    cfg = load_config({"model-family": "hf-text", "tasks": "glue-cola,glue-rte",
                       "data-sources": f"glue-cola={tmp_path}"})
    raw = load_raw_task("glue-cola", cfg)
    data = make_splits("glue-cola", raw, train_size=40, test_size=20, val_fraction=0.1, seed=0,
                       preprocess=lambda texts: torch.tensor([t.startswith("validation") for t in texts]))
    assert (len(data.train), len(data.validation), len(data.test)) == (36, 4, 20)
    assert not data.train.x.any() and not data.validation.x.any() and data.test.x.all()
    everything = make_splits("glue-cola", raw, train_size=0, test_size=0, val_fraction=0.1, seed=0,
                             preprocess=lambda texts: torch.zeros(len(texts)))
    assert (len(everything.train), len(everything.validation), len(everything.test)) == (54, 6, 30)


def test_wrong_configuration_is_refused(tmp_path: Path) -> None:
    write_glue(tmp_path, "glue-qnli", "train", 10, names=["yes", "no"])
    write_glue(tmp_path, "glue-qnli", "validation", 4)
    with pytest.raises(DataUnavailableError, match="has classes"):
        load_glue("glue-qnli", str(tmp_path))


def test_metrics_matthews_f1_accuracy() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 0, 1, 1, 1])
    tp, tn, fp, fn = 3, 2, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    cola = glue_metrics("glue-cola", preds, labels)
    assert cola == pytest.approx({"accuracy": 5 / 8, "matthews": mcc})
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert glue_metrics("glue-mrpc", preds, labels) == pytest.approx({"accuracy": 5 / 8, "f1": f1})
    assert glue_metrics("glue-qqp", preds, labels)["f1"] == pytest.approx(f1)
    assert glue_metrics("glue-sst2", preds, labels) == {"accuracy": 5 / 8}
    assert glue_metrics("glue-cola", labels, labels)["matthews"] == 1.0


def test_official_metrics_are_protocol_keys_and_only_glue_tasks_send_them() -> None:
    from types import SimpleNamespace

    from atmflow import protocol
    from atmflow.client.evaluation import official_metric_names, official_metrics
    from atmflow.rounds.exchange import task_scores

    assert {s.metric for s in GLUE_TASKS.values()} - {"accuracy"} == set(protocol.OFFICIAL_METRICS)
    assert official_metric_names("glue-cola") == ("matthews",) and official_metric_names("glue-qqp") == ("f1",)
    assert official_metric_names("glue-sst2") == official_metric_names("mnist") == ()
    labels, preds = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0]), torch.tensor([1, 1, 0, 0, 0, 1, 1, 1])
    assert official_metrics("glue-cola", preds, labels) == pytest.approx({"matthews": 4 / math.sqrt(240)})
    assert official_metrics("glue-mrpc", preds, labels) == pytest.approx({"f1": 6 / 9})
    assert official_metrics("mnist", preds, labels) == official_metrics("glue-rte", preds, labels) == {}

    def scores(content: object) -> dict[str, float]:  # task_scores reads only the reply's content
        return task_scores(SimpleNamespace(content=content))  # type: ignore[arg-type]

    assert scores(protocol.evaluate_reply("mnist", 0.5, 1.25, 8)) == {"accuracy": 0.5, "loss": 1.25}
    assert scores(protocol.evaluate_reply("glue-cola", 0.5, 1.25, 8, {"matthews": -0.25})) == {
        "accuracy": 0.5, "loss": 1.25, "matthews": -0.25}
    with pytest.raises(ValueError, match="unknown official metric"):
        protocol.evaluate_reply("glue-cola", 0.5, 1.25, 8, {"mcc": 0.1})


def test_a_glue_run_reports_the_official_metrics(tmp_path: Path) -> None:
    """A whole in-process run (tiny BERT, one-shot TA) on CoLA, MRPC and SST-2: every score of a GLUE task whose
    official metric is not accuracy carries it (pretrained, merged and individual scores), and results.json and
    report.md show it per task (accuracy for SST-2)."""
    import json

    from test_text import write_tiny_bert

    from atmflow.sim.local import run_inprocess

    tasks = ("glue-cola", "glue-mrpc", "glue-sst2")
    for task in tasks:
        write_glue(tmp_path / "glue", task, "train", 40)
        write_glue(tmp_path / "glue", task, "validation", 16)
    res = run_inprocess({"model-family": "hf-text", "model": str(write_tiny_bert(tmp_path / "bert")),
                         "tasks": ",".join(tasks), "data-sources": ",".join(f"{t}={tmp_path / 'glue'}" for t in tasks),
                         "train-size": 40, "test-size": 16, "max-length": 16, "budget-epochs": 1, "lr": 1e-3,
                         "num-threads": 1, "strategy": "ta", "run-name": "glue", "output-dir": str(tmp_path / "out")})
    out = json.loads((tmp_path / "out" / "glue" / "results.json").read_text())
    for scores in (out["pretrained"]["tasks"], out["final"]["tasks"], out["individual"]["tasks"]):
        cola, mrpc, sst2 = (scores[t] for t in tasks)
        assert set(cola) == {"accuracy", "loss", "matthews"} and -1 <= cola["matthews"] <= 1
        assert set(mrpc) == {"accuracy", "loss", "f1"} and 0 <= mrpc["f1"] <= 1
        assert set(sst2) == {"accuracy", "loss"}
    assert out["final"]["tasks"] == res.rounds[-1].tasks
    report = (tmp_path / "out" / "glue" / "report.md").read_text()
    assert "| model | glue-cola (Matthews correlation) | glue-mrpc (F1) | glue-sst2 (accuracy) |" in report
    final = res.rounds[-1].tasks
    assert (f"| TA | {final['glue-cola']['matthews']:.3f} | {final['glue-mrpc']['f1']:.3f} | "
            f"{final['glue-sst2']['accuracy']:.3f} |") in report
