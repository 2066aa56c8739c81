"""atmflow merge: merge fine-tuned checkpoints of one base model into one model.

Files are .safetensors (read one tensor at a time) or PyTorch state dicts. Every fine-tuned file must
hold exactly the base's tensors with the same shapes and dtypes. Tensors that are not floating point
(e.g. BatchNorm's num_batches_tracked) and floating-point tensors whose name matches an --exclude
REGEX (frozen parameters such as classification heads) are copied from the base unchanged and
listed. TATR without --grads is zero-shot (|tau_j| estimates the gradient, paper 003 Eq. 7).
Inputs and the merged model must be finite (NaN / inf refused, naming the file and tensor, unless
--allow-non-finite), --out must not be one of the inputs, and every parameter is checked by its rule
(the same check as the run config's key). The output is written to a temporary file and renamed:
nothing is written, and no temporary file is left, if the merge fails.

The methods and their options come from :mod:`atmflow.merging.registry` (one option per parameter
name; a new rule's parameters appear here by themselves). This module does not import torch until a
merge runs, so that building the CLI stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atmflow.merging.rule import Param

def parameter_options() -> dict[str, Param]:
    """``{parameter name: its first declaration}`` over every registered method (``--lam``, ``--k``, ...)."""
    from atmflow.merging.registry import METHODS, method_names

    options: dict[str, Param] = {}
    for method in method_names():
        for p in METHODS[method].params():
            options.setdefault(p.name, p)
    return options


class _HelpWithMethods(argparse.Action):
    """``--help`` that also lists every merge method with its parameters and defaults (from the registry)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from atmflow.merging.registry import METHODS, method_names

        rows = []
        for name in method_names():
            rule = METHODS[name]
            params = " ".join(f"--{p.name.replace('_', '-')} {p.default}" for p in rule.params())
            rows.append(f"  {name:<12} {params}\n  {'':<12} {(rule.__doc__ or '').splitlines()[0].replace('``', '')}")
        parser.epilog = "methods, with their parameters and defaults:\n" + "\n".join(rows)
        parser.print_help()
        parser.exit()


def add_merge_command(sub: Any) -> None:
    """Add ``merge`` to the subcommands ``sub`` (the result of ``ArgumentParser.add_subparsers``)."""
    p = sub.add_parser("merge", help="merge fine-tuned checkpoints of one base model",
                       description=__doc__.split("\n\nThis module")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("-h", "--help", action=_HelpWithMethods)
    p.add_argument("--method", required=True, help="merge rule (listed below)")
    p.add_argument("--base", required=True, help="the model every checkpoint was fine-tuned from")
    p.add_argument("--finetuned", required=True, nargs="+", metavar="FILE", help="fine-tuned checkpoints")
    p.add_argument("--out", required=True, help="merged model (.safetensors, else written with torch.save)")
    p.add_argument("--grads", nargs="+", metavar="FILE",
                   help="TATR: per-task gradient estimates E|grad L_t| at the base, in --finetuned's order")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="copy floating-point tensors whose name matches REGEX from the base (repeatable)")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="merge even if an input or the result holds NaN or inf (refused by default)")
    for name, declared in parameter_options().items():
        kind = int if isinstance(declared.default, int) else float
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=argparse.SUPPRESS,
                       help=declared.meaning)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atmflow.merging.checkpoints import merge_checkpoints

    params = {name: getattr(args, name) for name in parameter_options() if hasattr(args, name)}
    try:
        report = merge_checkpoints(args.method, args.base, args.finetuned, args.out, grads=args.grads,
                                   exclude=args.exclude, allow_non_finite=args.allow_non_finite, **params)
    except (ValueError, OSError) as err:
        print(f"atmflow merge: error: {err}", file=sys.stderr)
        return 2
    values = ", ".join(f"{k}={v}" for k, v in report.params.items())
    print(f"merged {len(report.merged)} tensors ({report.parameters:,} parameters) of {len(args.finetuned)} "
          f"checkpoints with {report.method} ({values}) into {args.out}")
    for why, names in (("not floating point", report.not_float), ("--exclude", report.excluded)):
        print(f"passed through unchanged, {why} ({len(names)}): {', '.join(names) or '-'}")
    return 0
