"""Benchmark: Task Arithmetic against PA-ATM at equal budget on the embedded vision benchmark.

* TA: every task fine-tunes the pretrained encoder for the whole budget (10 epochs); lambda is
  chosen on the validation splits from {0.05, 0.1, 0.2, ..., 1.0}.
* PA-ATM: 10 rounds x 1 epoch, mean merge with alpha 1 (paper 000, Eq. 5).
* pretrained: the ImageNet encoder with the frozen heads; individual: each task's own TA-round
  model (fine-tuned for the whole budget), the upper bound for normalized accuracy.

Same data for every method; several seeds (the seed drives the probe heads' shots and the data
order); mean and standard deviation over seeds. Runs in this process through the in-process grid
(the real ServerApp logic and ClientApp, without Ray), seeds in parallel worker processes.

Usage: ``python -m atmflow.sim.benchmark [--seeds 0 1 2] [--workers 2] [--out outputs/benchmark]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

LAMBDA_GRID = "0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"


def run_seed(seed: int, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """TA and PA-ATM for one seed; returns per-method per-task test accuracies and costs."""
    from atmflow.sim.local import run_inprocess

    common = {**overrides, "seed": seed, "output-dir": out, "budget-epochs": 10}
    ta = run_inprocess({**common, "run-name": f"ta-seed{seed}", "strategy": "ta", "ta-lambda-grid": LAMBDA_GRID})
    atm = run_inprocess({**common, "run-name": f"pa-atm-seed{seed}", "strategy": "pa-atm", "epochs-per-round": 1,
                         "individual": False})
    assert ta.individual is not None
    acc = lambda scores: {t: s["accuracy"] for t, s in scores.items()}  # noqa: E731
    return {
        "seed": seed,
        "pretrained": acc(ta.pretrained),
        "individual": acc(ta.individual),
        "ta": acc(ta.rounds[-1].tasks),
        "pa-atm": acc(atm.rounds[-1].tasks),
        "ta_lambda": ta.rounds[-1].extra["lambda"],
        "bytes_up_per_task": {"ta": ta.rounds[-1].bytes_up / 4, "pa-atm": sum(r.bytes_up for r in atm.rounds) / 4},
        "wall_s": {"ta": ta.wall_s, "pa-atm": atm.wall_s},
    }


def _stat(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(runs: list[dict[str, Any]]) -> str:
    tasks = sorted(runs[0]["pretrained"])
    methods = [("pretrained", "pretrained"), ("TA (λ on validation)", "ta"), ("PA-ATM 10x1", "pa-atm"),
               ("individual (upper bound)", "individual")]
    lines = ["| method | " + " | ".join(tasks) + " | avg | normalized |", "|" + "---|" * (len(tasks) + 3)]
    for label, key in methods:
        cells = [_stat([r[key][t] for r in runs]) for t in tasks]
        avg = [statistics.fmean(r[key].values()) for r in runs]
        norm = [statistics.fmean(r[key][t] / r["individual"][t] for t in tasks) for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{_stat(avg)}** | {_stat(norm)} |")
    lams = ", ".join(f"{r['ta_lambda']:g}" for r in runs)
    mb = lambda k: statistics.fmean(r["bytes_up_per_task"][k] for r in runs) / 1e6  # noqa: E731
    lines += ["", f"Seeds {[r['seed'] for r in runs]}; mean ± standard deviation over seeds. "
              f"TA's λ chosen per seed: {lams}. Uploaded per task: TA {mb('ta'):.1f} MB, PA-ATM {mb('pa-atm'):.1f} MB."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="seeds run in parallel (one CPU thread each)")
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=300)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    overrides = {"train-size": args.train_size, "test-size": args.test_size, "num-threads": 1}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(run_seed, args.seeds, [str(out)] * len(args.seeds), [overrides] * len(args.seeds)))
    text = table(runs) + f"\n\nTotal wall time {time.perf_counter() - started:.0f} s with {args.workers} worker(s)."
    (out / "benchmark.json").write_text(json.dumps(runs, indent=2))
    (out / "benchmark.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
