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


def parse_overrides(text: str, flag: str = "--run-config") -> dict[str, object]:
    """Parse ``flwr run``'s ``--run-config``, with Flower's own parser: space-separated ``key=value``
    (values in TOML), or the path of a ``.toml`` file whose (flattened) tables are the overrides. ``flag``
    names the option in errors (the studies' ``--options`` use the same syntax)."""
    import click
    from flwr.common.config import parse_config_args

    if text.strip().endswith(".toml") and not Path(text.strip()).expanduser().is_file():
        raise ConfigError(f"{flag} file {text.strip()!r} not found")
    try:
        return dict(parse_config_args([text.strip()] if text.strip() else None))
    except (click.ClickException, ValueError, tomllib.TOMLDecodeError) as err:
        why = err.format_message() if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"cannot parse {flag} {text!r}: {why} (strings need quotes: key='text')") from None


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


def is_app_folder(folder: Path, fab_id: str) -> bool:
    """``folder`` holds the pyproject.toml of the Flower app ``fab_id`` (``<publisher>/<project name>``)."""
    try:
        with (folder / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f)
        return f"{project['tool']['flwr']['app']['publisher']}/{project['project']['name']}" == fab_id
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return False


def server_output_dir(cfg: RunConfig, fab_id: str, cwd: Path | None = None) -> RunConfig:
    """``cfg`` with a relative ``output-dir`` made absolute in the app folder, for the ServerApp.

    Flower does not tell the ServerApp which folder ``flwr run`` was called from (it sends the app as a
    bundle, plus the overrides); the ServerApp runs in the SuperLink's working folder, which for Flower's
    local SuperLink is the folder where the ``flwr run`` that started it was called. When that folder is
    this app's folder (its pyproject.toml names the same app, ``fab_id``), a relative ``output-dir`` is
    taken there. Otherwise (a SuperLink started elsewhere, or a remote one) the run stops before any work,
    naming the folder, rather than writing results where nobody looks for them.
    """
    if Path(cfg.output_dir).expanduser().is_absolute():
        return cfg
    here = (cwd or Path.cwd()).resolve()
    if not is_app_folder(here, fab_id):
        raise ConfigError(
            f"output-dir={cfg.output_dir!r} is relative, and the ServerApp runs in {here}, which is not the folder of "
            f"app {fab_id!r} (Flower runs it where the SuperLink was started). Give an absolute folder, e.g. "
            f"flwr run . --run-config \"output-dir='$PWD/{cfg.output_dir}'\", or stop that SuperLink so that the next "
            "flwr run . starts it in your app folder")
    return cfg.model_copy(update={"output_dir": str(here / Path(cfg.output_dir).expanduser())})
