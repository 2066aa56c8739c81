"""Command line: ``atmflow validate`` checks a run config in well under a second, before ``flwr run``;
``atmflow merge`` merges fine-tuned checkpoints; ``atmflow negate`` and ``atmflow disentanglement`` are
task-arithmetic analyses of fine-tuned task vectors (paper 004)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atmflow.analyses.disentanglement import add_disentanglement_command
from atmflow.analyses.negation import add_negate_command
from atmflow.app_config import resolve_config
from atmflow.config import ConfigError
from atmflow.merging.cli import add_merge_command


def validate(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(Path(args.project), args.run_config)
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
