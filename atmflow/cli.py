"""Command line: ``atmflow validate`` checks a run config, the model's weights and every task's data before
``flwr run`` (``--config-only``: the config alone, in well under a second);
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
    """Exit 2: the run config is invalid; 1: data or weights are missing or unusable; 0: ready to run."""
    try:
        cfg = resolve_config(Path(args.project), args.run_config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"run config OK: strategy={cfg.strategy}, tasks={','.join(cfg.tasks)}, rounds={cfg.rounds}")
    if args.config_only:
        return 0
    from atmflow.preflight import preflight

    problems = preflight(cfg)
    if problems:
        print(f"{len(problems)} problem(s) before this run can start:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("ready to run: weights and data found")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atmflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="validate the run config, the model's weights and every task's data")
    check.add_argument("--project", default=".", help="folder of the Flower app's pyproject.toml")
    check.add_argument("--run-config", default="", help="overrides, as for flwr run: \"key=value key2='text'\", "
                       "or a .toml file of them")
    check.add_argument("--config-only", action="store_true", help="check the run config only (no data, no weights)")
    check.set_defaults(func=validate)
    add_merge_command(sub)
    add_negate_command(sub)
    add_disentanglement_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
