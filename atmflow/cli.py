"""Command line: ``atmflow validate`` checks a run config in well under a second, before ``flwr run``;
``atmflow merge`` merges fine-tuned checkpoints; ``atmflow negate`` and ``atmflow disentanglement`` are
task-arithmetic analyses of fine-tuned task vectors (paper 004)."""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from atmflow.config import ConfigError, load_config
from atmflow.disentanglement import add_disentanglement_command
from atmflow.merging.cli import add_merge_command
from atmflow.negation import add_negate_command


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


def validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config({**app_defaults(Path(args.project)), **parse_overrides(args.run_config)})
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"run config OK: strategy={cfg.strategy}, tasks={','.join(cfg.tasks)}, rounds={cfg.rounds}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atmflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="validate the app's run config plus overrides")
    check.add_argument("--project", default=".", help="folder of the Flower app's pyproject.toml")
    check.add_argument("--run-config", default="", help="overrides, as for flwr run: \"key=value key2='text'\"")
    check.set_defaults(func=validate)
    add_merge_command(sub)
    add_negate_command(sub)
    add_disentanglement_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
