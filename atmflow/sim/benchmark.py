"""Benchmark: every merging method at equal budget on the embedded vision benchmark.

Budget: 10 epochs of fine-tuning per task (paper 001, Table 1 "original settings"):

* one-shot methods: every task fine-tunes the pretrained encoder for 10 epochs, once; the task
  vectors are merged with TA, TIES, Breadcrumbs, DARE, TATR (exemplar gradients), TATR zero-shot
  and TIES+TATR, lambda chosen on the validation splits from {0.1, ..., 1.0}. The clients' cache
  (``cache-dir``) makes the seven methods share one fine-tuning, as in the papers.
* PA-ATM10: 10 rounds x 1 epoch from the pretrained encoder (mean merge, alpha 1). PA-ATM30 is the
  same run continued to 30 rounds (30 epochs; the papers' extra row); PA-ATM10 is its round 10,
  which is exactly the 10-round run (every round's seed depends only on the round).
* PH-ATM10: the TA-merged model, then 10 rounds x 1 epoch on the validation splits.
* pretrained and individual (each task's own 10-epoch model) rows bound the table.

Several seeds (the seed draws the probe heads' shots and orders the data); mean ± standard
deviation over seeds. Runs in-process (the real ServerApp logic and ClientApp through an
in-process grid, no Ray), jobs in parallel worker processes with one CPU thread each.

Usage: ``python -m atmflow.sim.benchmark [--seeds 0 1 2] [--workers 2] [--out outputs/benchmark]``

``--benchmark text-small`` runs the embedded text benchmark instead (its preset: MiniLM-L6 on five
text tasks, :data:`atmflow.data.text_tasks.TEXT_SMALL`); ``--methods TA PA-ATM`` limits the rows
(one-shot method names, ``PH-ATM``, ``PA-ATM``; pretrained and individual always come).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ONESHOT = {
    "TA": {"merge": "ta"},
    "TIES": {"merge": "ties"},
    "Breadcrumbs": {"merge": "breadcrumbs"},
    "DARE": {"merge": "dare"},
    "TATR": {"merge": "tatr"},
    "TATR (zero-shot)": {"merge": "tatr", "tatr-exemplars": 0},
    "TIES+TATR": {"merge": "ties+tatr"},
}


def _accuracies(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {t: s["accuracy"] for t, s in scores.items()}


def _slug(name: str) -> str:
    return "".join(c for c in name.lower().replace(" ", "-").replace("+", "-") if c.isalnum() or c == "-")


def run_job(job: str, seed: int, out: str, overrides: dict[str, Any], budget: int, atm_rounds: int,
            methods: tuple[str, ...] = (*ONESHOT, "PH-ATM")) -> dict[str, Any]:
    """One job of one seed: "oneshot" (the one-shot ``methods`` and PH-ATM, sharing the fine-tuning
    cache) or "pa-atm" (PA-ATM to ``atm_rounds`` rounds). Returns ``{row: {accuracy, uploaded, ...}}``."""
    from atmflow.sim.local import run_inprocess

    common = {**overrides, "seed": seed, "output-dir": out, "cache-dir": f"{out}/cache-seed{seed}",
              "budget-epochs": budget}
    rows: dict[str, Any] = {}
    if job == "pa-atm":
        run = run_inprocess({**common, "run-name": f"pa-atm-seed{seed}", "strategy": "pa-atm", "rounds": atm_rounds,
                             "individual": False})
        for upto in (budget, atm_rounds):
            record = run.rounds[upto - 1]
            rows[f"PA-ATM{upto}"] = {"accuracy": _accuracies(record.tasks),
                                     "uploaded": sum(r.bytes_up for r in run.rounds[:upto]),
                                     "mean_abs_cosine": record.geometry["mean_abs_cosine"]}
        rows["pretrained"] = {"accuracy": _accuracies(run.pretrained)}
        return rows
    for name, extra in ONESHOT.items():
        if name not in methods:
            continue
        run = run_inprocess({**common, "run-name": f"{_slug(name)}-seed{seed}", "strategy": "oneshot", **extra})
        (record,) = run.rounds
        rows[name] = {"accuracy": _accuracies(record.tasks), "uploaded": record.bytes_up,
                      "lambda": record.extra["lambda"], "mean_abs_cosine": record.geometry["mean_abs_cosine"]}
        if run.individual:
            rows["individual"] = {"accuracy": _accuracies(run.individual)}
        if run.pretrained:
            rows.setdefault("pretrained", {"accuracy": _accuracies(run.pretrained)})
    if "PH-ATM" not in methods:
        return rows
    ph = run_inprocess({**common, "run-name": f"ph-atm-seed{seed}", "strategy": "ph-atm", "rounds": budget,
                        "individual": False})
    rows[f"PH-ATM{budget}"] = {"accuracy": _accuracies(ph.rounds[-1].tasks),
                               "uploaded": sum(r.bytes_up for r in ph.rounds),
                               "mean_abs_cosine": ph.rounds[-1].geometry["mean_abs_cosine"]}
    return rows


def _stat(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(per_seed: dict[int, dict[str, Any]], rows: list[str]) -> str:
    seeds = sorted(per_seed)
    tasks = sorted(per_seed[seeds[0]]["pretrained"]["accuracy"])
    lines = ["| method | " + " | ".join(tasks) + " | avg | normalized | MB sent per task | mean abs cos |",
             "|" + "---|" * (len(tasks) + 5)]
    for row in rows:
        runs = [per_seed[s][row] for s in seeds]
        cells = [_stat([r["accuracy"][t] for r in runs]) for t in tasks]
        avg = _stat([statistics.fmean(r["accuracy"].values()) for r in runs])
        norm = _stat([statistics.fmean(r["accuracy"][t] / per_seed[s]["individual"]["accuracy"][t] for t in tasks)
                      for s, r in zip(seeds, runs, strict=True)])
        mb = f"{statistics.fmean(r['uploaded'] for r in runs) / len(tasks) / 1e6:.0f}" if "uploaded" in runs[0] else "-"
        cos = f"{statistics.fmean(r['mean_abs_cosine'] for r in runs):.3f}" if "mean_abs_cosine" in runs[0] else "-"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | **{avg}** | {norm} | {mb} | {cos} |")
    lams = "; ".join(f"{m}: " + ", ".join(f"{per_seed[s][m]['lambda']:g}" for s in seeds) for m in ONESHOT
                     if m in per_seed[seeds[0]])
    lines += ["", f"Seeds {seeds}; mean ± standard deviation over seeds. Lambda chosen on validation per seed: {lams}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="jobs run in parallel (one CPU thread each)")
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--budget-epochs", type=int, default=10, help="one-shot epochs = ATM rounds compared")
    parser.add_argument("--atm-rounds", type=int, default=30, help="PA-ATM is run to this many rounds")
    parser.add_argument("--benchmark", choices=["", "text-small"], default="",
                        help="run config preset (text-small: the embedded text benchmark; sizes from its preset)")
    parser.add_argument("--methods", nargs="+", default=[*ONESHOT, "PH-ATM", "PA-ATM"],
                        help="rows to run: one-shot method names, PH-ATM, PA-ATM")
    args = parser.parse_args(argv)
    unknown = set(args.methods) - {*ONESHOT, "PH-ATM", "PA-ATM"}
    if unknown:
        parser.error(f"unknown --methods {sorted(unknown)}; allowed: {[*ONESHOT, 'PH-ATM', 'PA-ATM']}")
    out = Path(args.out).resolve()
    overrides: dict[str, Any] = {"num-threads": 1}
    if args.benchmark:
        overrides["benchmark"] = args.benchmark
    else:
        overrides.update({"train-size": args.train_size, "test-size": args.test_size, "image-size": args.image_size})
    methods = tuple(args.methods)
    jobs = [(job, seed) for job in ("pa-atm", "oneshot") for seed in args.seeds  # longest jobs first
            if job == "oneshot" or "PA-ATM" in methods]
    started = time.perf_counter()
    per_seed: dict[int, dict[str, Any]] = {s: {} for s in args.seeds}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [(seed, pool.submit(run_job, job, seed, str(out), overrides, args.budget_epochs, args.atm_rounds,
                                      methods)) for job, seed in jobs]
        for seed, future in futures:
            per_seed[seed].update(future.result())
    pa_atm = dict.fromkeys([f"PA-ATM{args.budget_epochs}", f"PA-ATM{args.atm_rounds}"]) if "PA-ATM" in methods else {}
    rows = ["pretrained", *(m for m in ONESHOT if m in methods),
            *([f"PH-ATM{args.budget_epochs}"] if "PH-ATM" in methods else []), *pa_atm, "individual"]
    from atmflow.config import load_config

    cfg = load_config(overrides)
    sizes = f"Train {cfg.train_size} / test {cfg.test_size} examples per task"
    sizes += f", {cfg.max_length} tokens" if cfg.model_family == "hf-text" else f", {cfg.image_size} px"
    text = table(per_seed, rows) + (f"\n\n{sizes}. Total wall time {time.perf_counter() - started:.0f} s "
                                    f"with {args.workers} worker(s).")
    (out / "benchmark.json").write_text(json.dumps(per_seed, indent=2))
    (out / "benchmark.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
