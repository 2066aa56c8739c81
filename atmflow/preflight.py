"""Everything ``atmflow validate`` checks before a run: the model's weights, every task's data and
the ``node-keys-file`` (when set; on the SuperLink's machine, where the ServerApp reads it).

``flwr run`` would find a missing data folder or missing weights only when a client loads its task;
:func:`preflight` finds each such problem up front, on this machine, and names the task or key, the
path and what to do. The checks load each task's data as a client does (:func:`~atmflow.data.tasks.load_raw_task`),
so they see what the clients will see when the data lie at the same paths.
"""

from __future__ import annotations

from collections.abc import Callable

from atmflow.config import RunConfig
from atmflow.data.splits import HELD_OUT_TEST_FRACTION
from atmflow.data.tasks import data_location, load_raw_task

Report = Callable[[str], None]


def check_model(cfg: RunConfig) -> list[str]:
    """Problems with the model family, model or pretrained weights ([] = all found locally)."""
    from atmflow.models.family import get_family

    try:
        get_family(cfg).check_available()
    except (ValueError, RuntimeError, OSError) as err:
        return [f"model-family={cfg.model_family!r} model={cfg.model_name!r} pretrained={cfg.pretrained_source!r}: "
                f"{err}"]
    return []


def check_task(task: str, cfg: RunConfig) -> tuple[list[str], str]:
    """(problems with the task's data, a one-line summary when there are none)."""
    where = data_location(task, cfg).source or "an installed package"
    try:
        raw = load_raw_task(task, cfg)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        return [f"task {task!r} (data at {where}): {err}"], ""
    problems = []
    n_test = len(raw.test_labels) if raw.test_labels is not None else round(HELD_OUT_TEST_FRACTION * len(raw.labels))
    n_train = len(raw.labels) - (0 if raw.test_labels is not None else n_test)
    if raw.num_classes < 2:
        problems.append(f"task {task!r} (data at {where}): {raw.num_classes} class(es); a task needs at least 2")
    for split, n in (("train", n_train), ("test", n_test)):
        if n == 0:
            problems.append(f"task {task!r} (data at {where}): the {split} split is empty; add examples")
    for key, want, have in (("train-size", cfg.train_size, n_train), ("test-size", cfg.test_size, n_test)):
        if want > have > 0:
            problems.append(f"task {task!r}: {key}={want} but the {key.split('-')[0]} split has {have} examples; "
                            f"lower {key} (0 = all)")
    summary = f"task {task!r}: {raw.num_classes} classes, {n_train} train / {n_test} test examples (from {where})"
    return problems, summary


def check_node_keys(cfg: RunConfig) -> list[str]:
    """Problems with ``node-keys-file`` ([] = none set, or every task has a valid key there)."""
    from atmflow.server.node_keys import NodeKeysError, load_node_keys

    try:
        if cfg.node_keys_file:
            load_node_keys(cfg.node_keys_file, cfg.tasks)
    except NodeKeysError as err:
        return [str(err)]
    return []


def preflight(cfg: RunConfig, report: Report = print) -> list[str]:
    """Check the model, every task and the node keys (see module docstring); each problem is a line naming it."""
    problems = check_model(cfg) + check_node_keys(cfg)
    if not problems:
        report(f"model OK: {cfg.model_family} {cfg.model_name} ({cfg.pretrained_source})")
    for task in cfg.tasks:
        found, summary = check_task(task, cfg)
        problems += found
        if summary and not found:
            report(summary)
    return problems
