"""Run a named study: ``python -m atmflow.studies <name> [options]``.

Studies: budget-distribution, budget, original-settings, orthogonality, conflict, talos, privacy,
epoch-gradients, base-trajectory (``all``
runs them in that order). Outputs go to ``<root>/<name>/`` (results.csv, report.md, figures/); every run is
cached in ``<root>/runs/<hash>/`` and the clients' fine-tuning in ``<root>/cache/``, both shared by
the studies of one root, so re-running computes only what is missing. Examples::

    python -m atmflow.studies original-settings --seeds 0
    python -m atmflow.studies budget --options "budgets='2,4,10'" --run-config "train-size=200"
    python -m atmflow.studies budget-distribution --run-config "device='cuda'"   # on a GPU
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from atmflow.app_config import parse_overrides
from atmflow.config import ConfigError
from atmflow.studies import STUDIES, run_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atmflow.studies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="outputs/studies", help="folder of the studies, their runs and cache")
    parser.add_argument("--out", default=None, help="the study's output folder (default <root>/<study>)")
    parser.add_argument("--run-config", default="", help="run-config overrides for every run, as for flwr run: "
                        "\"train-size=200 tasks='mnist,digits'\"")
    parser.add_argument("--options", default="", help="the study's own options, e.g. \"budgets='2,4,10'\"")
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel (one CPU thread per run)")
    parser.add_argument("--keep-weights", action="store_true", help="keep each run's final encoder and checkpoint")
    args = parser.parse_args(argv)
    names = list(STUDIES) if args.study == "all" else [args.study]
    if len(names) > 1 and (args.options or args.out):
        parser.error("--options and --out name one study's options and folder: give a study name, not 'all'")
    command = "python -m atmflow.studies " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        run_config, options = parse_overrides(args.run_config), parse_overrides(args.options, "--options")
        for name in names:
            outcome = run_study(STUDIES[name], seeds=args.seeds, root=Path(args.root),
                                out=Path(args.out) if args.out else None, run_config=run_config, options=options,
                                workers=args.workers, keep_weights=args.keep_weights, command=command)
            print(f"{name}: {outcome.runs} runs ({outcome.computed} computed); report: {outcome.out / 'report.md'}")
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
