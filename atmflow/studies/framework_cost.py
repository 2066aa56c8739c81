"""The cost of the framework: one PA-ATM run three ways, timed and measured in one invocation.

1. ``flwr``: a real Flower simulation (``flwr run``, Ray backend; :mod:`atmflow.sim.flwr_local`);
2. ``inprocess``: the real ServerApp and ClientApp logic on the in-process grid (:mod:`atmflow.sim.local`);
3. ``plain``: :func:`plain_pa_atm`, a plain PyTorch loop doing the same work with no Flower at all: the
   project's model, data, fine-tuning (:func:`atmflow.client.training.fine_tune`), merge step
   (:class:`atmflow.strategies.merge_step.MergeStep`) and evaluation
   (:func:`atmflow.client.evaluation.evaluate_task`), one task after the other.

Each way runs in a subprocess of its own that carries an environment marker, so that every process
it starts (SuperLink, Ray, its workers) is measured: wall time, peak RSS of the process tree (the sum
of the processes' resident sets, sampled every 0.5 s; shared pages count once per process) and CPU
time (user + system, the last value seen of each process). Start-up is the time from launch to the
line ``round 0 (pretrained)`` (the handshake and the pretrained model's evaluation are done, round 1
starts): it holds the start of Python, torch, Flower, Ray, the data loading and the probe heads. The
three ways give bit-identical final weights (same seed, same numbers: the table says whether they
did), so the comparison is of equal work.

Usage: ``python -m atmflow.studies.framework_cost [--out outputs/framework-cost] [--run-config "..."]``
(default: the default run, PA-ATM with 10 rounds on the embedded benchmark; docs/benchmarks.md,
"Cost of the framework").
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from logging import INFO, getLogger
from pathlib import Path

import torch

from atmflow.app_config import anchored_run_config, app_defaults, parse_overrides, resolve_config
from atmflow.client.evaluation import evaluate_task
from atmflow.client.gradients import mean_abs_gradient
from atmflow.client.task import LocalTask, local_task, task_seed
from atmflow.client.training import fine_tune
from atmflow.config import RunConfig
from atmflow.files import atomic_save_tensors, atomic_write_text
from atmflow.merging import task_vector
from atmflow.merging.task_vectors import StateDict
from atmflow.models.family import get_family
from atmflow.processes import processes_with_env
from atmflow.protocol import TrainInstructions
from atmflow.rounds.records import Scores, avg_accuracy
from atmflow.strategies.plan import RunPlan, individual_instructions
from atmflow.threads import pin_threads

ROOT = Path(__file__).resolve().parents[2]
WAYS = ("flwr", "inprocess", "plain")
MARKER = "ATMFLOW_FRAMEWORK_COST"
STARTED = "round 0 (pretrained)"  # logged by every way once the pretrained model is evaluated
logger = getLogger("atmflow.framework_cost")


@dataclass
class PlainResults:
    """What :func:`plain_pa_atm` measured: the same scores a run's results.json holds, and the final weights."""

    pretrained: Scores
    rounds: list[Scores]
    individual: Scores | None
    final: StateDict


def check_plain(cfg: RunConfig) -> None:
    """The plain loop does PA-ATM on the train split with full fine-tuning, exact transport (the task vectors as
    computed) and no privacy mode; refuse anything else."""
    unsupported = {"strategy": (cfg.strategy, "atm"), "init": (cfg.init, "pretrained"),
                   "atm-split": (cfg.atm_finetune_split, "train"),
                   "finetune": (cfg.finetune, "full"), "transport-dtype": (cfg.transport_dtype, "exact"),
                   "privacy": (cfg.privacy, "none"), "on-missing-task": (cfg.on_missing_task, "fail")}
    wrong = {k: got for k, (got, want) in unsupported.items() if got != want}
    if wrong:
        needed = ", ".join(f"{k}={want!r}" for k, (_, want) in unsupported.items())
        raise ValueError(f"the plain loop runs PA-ATM only ({needed}); this config has {wrong}")


def fine_tuned_vector(encoder: torch.nn.Module, base: StateDict, local: LocalTask, instructions: TrainInstructions,
                      keys: list[str], task: str) -> tuple[StateDict, StateDict, float]:
    """What one client's train reply carries: ``(task vector, TATR gradient estimate or {}, examples)`` for the
    encoder fine-tuned from ``base`` (the client's per-task seed, as :func:`atmflow.client.app.train`)."""
    instructions = dataclasses.replace(instructions, seed=task_seed(instructions.seed, task))
    encoder.load_state_dict(base, strict=True)
    grads: StateDict = {}
    with local.autocast():
        if instructions.tatr_exemplars:
            grads = mean_abs_gradient(encoder, local.head, local.data.train, instructions.tatr_exemplars,
                                      instructions.seed, local.device)
        stats = fine_tune(encoder, local.head, local.data.split(instructions.split), instructions, local.device,
                          progress=f"plain, task {task}")
    tau = task_vector({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, base, keys)
    return tau, grads, float(stats.examples)


def test_scores(encoder: torch.nn.Module, task: str, local: LocalTask) -> dict[str, float]:
    """The task's test scores of ``encoder`` as it is (what an evaluate reply carries)."""
    with local.autocast():
        return evaluate_task(task, encoder, local.head, local.data.test, local.device)


def evaluate_all(encoder: torch.nn.Module, weights: StateDict, tasks: dict[str, LocalTask]) -> Scores:
    """Every task's test scores of ``weights``."""
    encoder.load_state_dict(weights, strict=True)
    return {task: test_scores(encoder, task, local) for task, local in sorted(tasks.items())}


def plain_pa_atm(cfg: RunConfig) -> PlainResults:
    """PA-ATM without Flower (papers 000 and 001): ``theta^(k+1) = merge(theta^(k), {tau_t^(k)})`` where
    ``tau_t^(k)`` is task t's fine-tuning of ``theta^(k)`` for ``epochs-per-round`` epochs (paper 000,
    Eq. 5 with the default mean merge), the merged model tested on every task after each round; then
    each task's own model (``budget-epochs`` from the pretrained one) when ``individual = true``. Same
    functions, seeds and order of sums as the Flower paths, so the same config gives the same numbers."""
    check_plain(cfg)
    pin_threads(cfg.num_threads)
    family = get_family(cfg)
    family.check_available()
    encoder = family.pretrained_encoder().to(cfg.dtype)
    pretrained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    keys = list(family.trainable_keys(encoder))
    tasks = {t: local_task(t, cfg) for t in cfg.tasks}
    results = PlainResults(evaluate_all(encoder, pretrained, tasks), [], None, pretrained)
    logger.info("%s: average test accuracy %.3f", STARTED, avg_accuracy(results.pretrained))
    plan = RunPlan.from_config(cfg)
    base = pretrained
    for round_ in range(1, plan.num_rounds + 1):
        instructions = plan.round(round_)
        vectors, grads, examples = {}, {}, {}
        for task in sorted(tasks):
            vectors[task], grads[task], examples[task] = fine_tuned_vector(encoder, base, tasks[task], instructions,
                                                                            keys, task)
        base = plan.merge_step.apply(base, vectors, examples, grads if plan.instructions.tatr_exemplars else None,
                                     round_=round_)
        results.rounds.append(evaluate_all(encoder, base, tasks))
        logger.info("round %d: average test accuracy %.3f", round_, avg_accuracy(results.rounds[-1]))
    results.final = base
    if cfg.individual:
        instructions = individual_instructions(cfg)
        results.individual = {}
        for task, local in sorted(tasks.items()):
            fine_tuned_vector(encoder, pretrained, local, instructions, keys, task)
            results.individual[task] = test_scores(encoder, task, local)  # the fine-tuned encoder, as the client
        logger.info("individual fine-tuning: average test accuracy %.3f", avg_accuracy(results.individual))
    return results


@dataclass
class Measured:
    """One way's cost: seconds from launch to the end and to :data:`STARTED`, peak RSS of its process tree
    (MB), CPU seconds of that tree, its exit code and the sha256 of its final weights."""

    way: str
    wall_s: float
    startup_s: float | None
    peak_rss_mb: float
    cpu_s: float
    exit_code: int
    final_sha256: str

    @property
    def after_startup_s(self) -> float | None:
        return None if self.startup_s is None else self.wall_s - self.startup_s


def _proc_numbers(pid: int) -> tuple[int, float]:
    """``(resident bytes, CPU seconds)`` of one process (0, 0.0 if it is gone)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        rss_pages, ticks = int(stat[21]), int(stat[11]) + int(stat[12])
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    return rss_pages * os.sysconf("SC_PAGE_SIZE"), ticks / os.sysconf("SC_CLK_TCK")


def measure(way: str, cmd: list[str], out: Path, log: Path) -> Measured:
    """Run ``cmd`` with an environment marker; sample the RSS and CPU time of every process carrying it, note
    when the output first shows :data:`STARTED`; its output goes to ``log``."""
    marker = str(out / way)
    env = {**os.environ, MARKER: marker}
    start = time.monotonic()
    started: list[float] = []
    peak, cpu = 0, {}
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not started and STARTED in line:
                    started.append(time.monotonic() - start)
                sink.write(line)
                sink.flush()

        reader = threading.Thread(target=read)
        reader.start()
        while proc.poll() is None:
            pids = {proc.pid, *processes_with_env(MARKER, marker)}
            numbers = {pid: _proc_numbers(pid) for pid in pids}
            peak = max(peak, sum(rss for rss, _ in numbers.values()))
            cpu.update({pid: c for pid, (_, c) in numbers.items() if c > 0})
            time.sleep(0.5)
        wall = time.monotonic() - start
        reader.join()
    final = out / way / "final_encoder.safetensors"
    sha = hashlib.sha256(final.read_bytes()).hexdigest() if final.is_file() else ""
    return Measured(way, wall, started[0] if started else None, peak / 2**20, sum(cpu.values()), proc.returncode,
                    sha)


def way_command(way: str, out: Path, run_config: str) -> list[str]:
    """The command that runs ``way`` with results in ``out/<way>``."""
    config = f"output-dir='{out}' run-name='{way}' {run_config}".strip()
    if way == "flwr":
        return [sys.executable, "-m", "atmflow.sim.flwr_local", "--app", str(ROOT), "--flwr-home",
                str(out / "flwr-home"), "--run-config", config]
    return [sys.executable, "-m", "atmflow.studies.framework_cost", "--one", way, "--run-config", config]


def run_one(way: str, run_config: str) -> int:
    """The ``inprocess`` or ``plain`` way in this process, writing ``final_encoder.safetensors`` (and, for
    ``inprocess``, the run's usual outputs) to ``<output-dir>/<run-name>``."""
    if way == "inprocess":
        from atmflow.sim.local import run_inprocess

        text = anchored_run_config(ROOT, run_config)
        run_inprocess({**app_defaults(ROOT), **parse_overrides(text)})
        return 0
    logging.basicConfig(level=INFO, format="%(asctime)s %(message)s")  # the plain loop's lines (no Flower logger)
    cfg = resolve_config(ROOT, run_config)
    results = plain_pa_atm(cfg)
    out = Path(cfg.output_dir) / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(results.final, out / "final_encoder.safetensors")
    atomic_write_text(out / "plain.json", json.dumps({"pretrained": results.pretrained, "rounds": results.rounds,
                                                      "individual": results.individual}, indent=2))
    return 0


def machine_load() -> str:
    """``nproc`` and the load averages, for the table's caption."""
    one, five, fifteen = os.getloadavg()
    return f"nproc {os.cpu_count()}, load average {one:.2f} {five:.2f} {fifteen:.2f}"


def table(rows: list[Measured]) -> str:
    """The measurements as a Markdown table, with ratios to the plain loop."""
    plain = next((r for r in rows if r.way == "plain"), None)

    def ratio(value: float | None, base: float | None) -> str:
        return "-" if value is None or not base else f"{value / base:.2f}x"

    lines = ["| way | wall s | start-up s | after start-up s | after start-up / plain | wall / plain | "
             "peak RSS MB | CPU s | same final weights as plain |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "-" if plain is None or r is plain else ("yes" if r.final_sha256 == plain.final_sha256 else "no")
        startup = "-" if r.startup_s is None else f"{r.startup_s:.1f}"
        after = "-" if r.after_startup_s is None else f"{r.after_startup_s:.1f}"
        lines.append(f"| {r.way} | {r.wall_s:.1f} | {startup} | {after} | "
                     f"{ratio(r.after_startup_s, plain and plain.after_startup_s)} | "
                     f"{ratio(r.wall_s, plain and plain.wall_s)} | {r.peak_rss_mb:.0f} | {r.cpu_s:.1f} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/framework-cost", help="folder for the three runs and the table")
    parser.add_argument("--run-config", default="", help="run-config overrides for all three ways, as for flwr run")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--one", choices=WAYS[1:], help=argparse.SUPPRESS)  # one way, in this process
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one, args.run_config)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    before = machine_load()
    rows = []
    for way in args.ways:
        rows.append(measure(way, way_command(way, out, args.run_config), out, out / f"{way}.log"))
        if rows[-1].exit_code != 0:
            print(f"framework_cost: the {way} run failed (exit {rows[-1].exit_code}); see {out / f'{way}.log'}",
                  file=sys.stderr)
            return 1
    text = (f"{table(rows)}\n\nBefore: {before}. After: {machine_load()}.\n"
            f"Command: python -m atmflow.studies.framework_cost {' '.join(argv if argv is not None else sys.argv[1:])}")
    atomic_write_text(out / "framework_cost.md", text + "\n")
    atomic_write_text(out / "framework_cost.json", json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
