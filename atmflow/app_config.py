"""The run config as Flower builds it: the app's ``[tool.flwr.app.config]`` defaults, then the overrides.

Every launcher and command that takes ``--run-config`` (``atmflow validate``, the simulation and
deployment drivers, the studies and analyses) resolves it here, so that each sees what ``flwr run``
would pass to the ServerApp.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from atmflow.config import ConfigError, RunConfig, load_config


def app_defaults(project: Path) -> dict[str, object]:
    """The ``[tool.flwr.app.config]`` table of a project's pyproject.toml."""
    with (project / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def parse_overrides(text: str) -> dict[str, object]:
    """Parse ``flwr run``'s ``--run-config``, with Flower's own parser: space-separated ``key=value``
    (values in TOML), or the path of a ``.toml`` file whose (flattened) tables are the overrides."""
    import click
    from flwr.common.config import parse_config_args

    if text.strip().endswith(".toml") and not Path(text.strip()).expanduser().is_file():
        raise ConfigError(f"--run-config file {text.strip()!r} not found")
    try:
        return dict(parse_config_args([text.strip()] if text.strip() else None))
    except (click.ClickException, ValueError, tomllib.TOMLDecodeError) as err:
        why = err.format_message() if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"cannot parse --run-config {text!r}: {why} (strings need quotes: key='text')") from None


def resolve_config(project: Path, overrides: str | Mapping[str, object] = "") -> RunConfig:
    """The validated run config of the app in ``project`` with ``overrides`` (``--run-config`` text, a
    ``.toml`` file, or a mapping of kebab-case keys) applied on top of its defaults. A relative
    ``task-file`` is relative to ``project`` (the app folder, where ``flwr run .`` starts)."""
    extra = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
    merged = {**app_defaults(project), **extra}
    task_file = str(merged.get("task-file", "") or "")
    if task_file and not Path(task_file).expanduser().is_absolute():
        merged["task-file"] = str((project / task_file).resolve())
    return load_config(merged)
