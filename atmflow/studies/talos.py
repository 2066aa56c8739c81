"""Benchmark: TaLoS sparse fine-tuning versus full fine-tuning under TA and PA-ATM (paper 004).

Four in-process runs on the embedded benchmark at equal budget (one seed unless told), run as
parallel jobs: TA (one round of ``budget-epochs``) and PA-ATM (``budget-epochs`` rounds x 1 epoch),
each with ``finetune = "full"`` and ``finetune = "talos"``. Per run: final average and normalized
accuracy, the bytes one client sends per round (the encoded task vector, :mod:`atmflow.transport`),
the fine-tuning time per optimizer step (client ``wall-s / steps``, mask calibration excluded) and the
TaLoS calibration time per train message. The individual models (normalized accuracy) are the TA
run's fine-tuned models, which are exactly what PA-ATM's individual exchange would compute (same
instructions and seed); the clients' cache (one folder per mode) lets ``atmflow negate`` and
``atmflow disentanglement`` reuse the same task vectors.

Usage: ``python -m atmflow.studies.talos [--seed 0] [--workers 4] [--out outputs/talos]
[--run-config "budget-epochs=5"]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from atmflow.rounds.records import normalized_accuracy

MODES = ("full", "talos")
STRATEGIES = ("ta", "pa-atm")


def run_job(strategy: str, mode: str, seed: int, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """One run; returns its results.json content."""
    from atmflow.config import load_config
    from atmflow.sim.local import run_inprocess

    budget = load_config(overrides).budget_epochs
    extra = {"rounds": budget, "individual": False} if strategy == "pa-atm" else {}
    run = run_inprocess({**overrides, "strategy": strategy, **extra, "seed": seed, "finetune": mode,
                         "output-dir": out, "cache-dir": f"{out}/cache-{mode}-seed{seed}",
                         "run-name": f"{strategy}-{mode}-seed{seed}"})
    return run.to_json()


def summarize(results: dict[str, Any], individual: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures from one run's results.json content."""
    train = [m for r in results["rounds"] for m in r["train"].values() if not m.get("cache-hit")]
    step_s = [m["wall-s"] / m["steps"] for m in train]
    calib = [m["talos-calibration-s"] for m in train if "talos-calibration-s" in m]
    final = results["final"]
    return {"label": results["label"], "tasks": {t: s["accuracy"] for t, s in final["tasks"].items()},
            "avg": final["avg_accuracy"], "normalized": normalized_accuracy(final["tasks"], individual["tasks"]),
            "bytes": final["bytes_per_client_round"], "step_s": statistics.mean(step_s) if step_s else None,
            "calibration_s": statistics.mean(calib) if calib else None, "individual": individual["avg_accuracy"],
            "wall_s": results["wall_s"]}


def table(rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    tasks = sorted(next(iter(rows.values()))["tasks"])

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| method | fine-tuning | " + " | ".join(tasks) + " | avg | normalized | individual avg | "
             "MB per client per round | s per fine-tuning step | s calibration per train message |",
             "|---|---|" + "---|" * len(tasks) + "---|---|---|---:|---:|---:|"]
    for (_, mode), r in rows.items():
        method = r["label"]
        cells = " | ".join(f"{r['tasks'][t]:.3f}" for t in tasks)
        lines.append(f"| {method} | {mode} | {cells} | **{r['avg']:.3f}** | {fmt(r['normalized'], '.3f')} | "
                     f"{fmt(r['individual'], '.3f')} | {r['bytes'] / 1e6:.2f} | {fmt(r['step_s'], '.2f')} | "
                     f"{fmt(r['calibration_s'], '.1f')} |")
    return "\n".join(lines)


def collect(out: str, seed: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of the runs found under ``out`` (``--collect``): finished runs from results.json, a run
    still going from its last checkpoint (its label then says how many rounds it has)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for s in STRATEGIES:
        for m in MODES:
            folder = Path(out) / f"{s}-{m}-seed{seed}"
            if (folder / "results.json").is_file():
                found[(s, m)] = json.loads((folder / "results.json").read_text())
            elif (folder / "checkpoint.json").is_file():
                data = json.loads((folder / "checkpoint.json").read_text())["results"]
                data["label"] += f" (stopped after {len(data['rounds'])} of {data['config']['rounds']} rounds)"
                found[(s, m)] = data
    return {(s, m): summarize(r, found[("ta", m)]["individual"]) for (s, m), r in found.items() if ("ta", m) in found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", default="outputs/talos")
    parser.add_argument("--run-config", default="", help="extra overrides, as for flwr run --run-config")
    parser.add_argument("--collect", action="store_true", help="only tabulate the runs already under --out")
    args = parser.parse_args(argv)
    if args.collect:
        print(table(collect(args.out, args.seed)))
        return 0
    from atmflow.app_config import parse_overrides

    overrides = parse_overrides(args.run_config)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {(s, m): pool.submit(run_job, s, m, args.seed, args.out, overrides)
                   for s in STRATEGIES for m in MODES}
        results = {key: f.result() for key, f in futures.items()}
    rows = {(s, m): summarize(results[(s, m)], results[("ta", m)]["individual"]) for s, m in results}
    text = (table(rows) + f"\n\nSeed {args.seed}. Total wall time {time.perf_counter() - started:.0f} s "
            f"with {args.workers} worker(s).\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "talos_benchmark.json").write_text(json.dumps({f"{s} {m}": r for (s, m), r in rows.items()},
                                                                    indent=2))
    (Path(args.out) / "talos_benchmark.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
