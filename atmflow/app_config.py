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
    """Parse ``flwr run``'s ``--run-config`` syntax: space-separated ``key=value``, values in TOML."""
    pairs = re.findall(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", text)
    try:
        return tomllib.loads("\n".join(f'"{k}" = {v}' for k, v in pairs))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"cannot parse --run-config {text!r}: {err} (strings need quotes: key='text')") from None


def resolve_config(project: Path, overrides: str | Mapping[str, object] = "") -> RunConfig:
    """The validated run config of the app in ``project`` with ``overrides`` (``--run-config`` text or a
    mapping of kebab-case keys) applied on top of its defaults."""
    extra = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
    return load_config({**app_defaults(project), **extra})
