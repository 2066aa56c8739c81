"""The run config as Flower builds it: the app's ``[tool.flwr.app.config]`` defaults, then the overrides.

Every launcher and command that takes ``--run-config`` (``atmflow validate``, the simulation and
deployment drivers, the studies and analyses) resolves it here, so that each sees what ``flwr run``
would pass to the ServerApp.
"""

from __future__ import annotations

import re
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


APP_RELATIVE_KEYS = ("task-file", "output-dir")  # relative values are relative to the app folder


def app_relative(project: Path, config: Mapping[str, object]) -> dict[str, str]:
    """The :data:`APP_RELATIVE_KEYS` of ``config`` that are relative paths, made absolute against ``project``."""
    out = {}
    for key in APP_RELATIVE_KEYS:
        value = str(config.get(key, "") or "")
        if value and not Path(value).expanduser().is_absolute():
            out[key] = str((project / value).resolve())
    return out


def anchored_run_config(project: Path, text: str) -> str:
    """``--run-config`` text for ``flwr run`` with a relative ``task-file`` / ``output-dir`` (given or default)
    made absolute against the app folder: the ServerApp and ClientApps do not start in the app folder, so a
    relative path would be looked for (or written) wherever they do. A ``.toml`` file is passed unchanged."""
    if text.strip().endswith(".toml"):
        return text
    anchored = {k: v for k, v in app_relative(project, {**app_defaults(project), **parse_overrides(text)}).items()
                if "'" not in v}
    kept = [m.group(0) for m in re.finditer(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", text) if m.group(1) not in anchored]
    return " ".join([*kept, *(f"{k}='{v}'" for k, v in anchored.items())])


def resolve_config(project: Path, overrides: str | Mapping[str, object] = "") -> RunConfig:
    """The validated run config of the app in ``project`` with ``overrides`` (``--run-config`` text, a
    ``.toml`` file, or a mapping of kebab-case keys) applied on top of its defaults. A relative
    ``task-file`` or ``output-dir`` is relative to ``project`` (the app folder)."""
    extra = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
    merged = {**app_defaults(project), **extra}
    return load_config({**merged, **app_relative(project, merged)})
