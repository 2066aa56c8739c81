"""Benchmark: every merging method at equal budget on the embedded vision benchmark.

This is the ``original-settings`` study (:mod:`atmflow.studies.original_settings`, paper 001
Table 1) with every one-shot method, run under the benchmark's historical command line; it writes
the study's outputs (``<out>/original-settings/``: results.csv, report.md, figures; runs cached in
``<out>/runs/``) plus ``<out>/benchmark.md`` (the report) and ``<out>/benchmark.json``
(``{seed: {row: {"accuracy": {task: value}, ...}}}``).

Budget: 10 epochs of fine-tuning per task. One-shot methods share one fine-tuning (the clients'
cache) and choose lambda on validation; PA-ATM10 and PA-ATM30 are rounds 10 and 30 of one PA-ATM
run; PH-ATM10 starts from the TA-merged model; pretrained and individual bound the table.

Usage: ``python -m atmflow.studies.benchmark [--seeds 0 1 2] [--workers 2] [--out outputs/benchmark]``

``--benchmark text-small`` runs the embedded text benchmark instead (its preset: MiniLM-L6 on five
text tasks, :data:`atmflow.data.text_tasks.TEXT_SMALL`, with the preset's sizes); ``--methods TA TIES``
limits the one-shot rows (pretrained, PH-ATM, PA-ATM and individual always come).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from atmflow.files import atomic_write_text
from atmflow.studies import STUDIES, run_study
from atmflow.studies.methods import ONESHOT

__all__ = ["ONESHOT", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="seeds run in parallel (one CPU thread each)")
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--budget-epochs", type=int, default=10, help="one-shot epochs = ATM rounds compared")
    parser.add_argument("--atm-rounds", type=int, default=30, help="PA-ATM is run to this many rounds")
    parser.add_argument("--benchmark", choices=["", "text-small"], default="",
                        help="run config preset (text-small: the embedded text benchmark, with its own sizes)")
    parser.add_argument("--methods", nargs="+", default=list(ONESHOT), choices=list(ONESHOT),
                        help="one-shot methods to run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    outcome = run_study(STUDIES["original-settings"], seeds=args.seeds, root=out, workers=args.workers,
                        run_config=({"benchmark": args.benchmark} if args.benchmark else
                                    {"train-size": args.train_size, "test-size": args.test_size,
                                     "image-size": args.image_size}),
                        options={"budget": args.budget_epochs, "long-rounds": args.atm_rounds,
                                 "methods": args.methods},
                        command="python -m atmflow.studies.benchmark " + " ".join(argv or []))
    per_seed: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in outcome.rows:
        row = per_seed[r.seed].setdefault(r.method, {"accuracy": {}})
        if r.metric == "accuracy" and r.task != "avg":
            row["accuracy"][r.task] = r.value
        elif r.task == "avg" and r.metric != "accuracy":
            row[r.metric] = r.value
    text = (outcome.out / "report.md").read_text()
    atomic_write_text(out / "benchmark.json", json.dumps(per_seed, indent=2))
    atomic_write_text(out / "benchmark.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
