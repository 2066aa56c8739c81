"""The shared study runner: a grid of runs, each cached in a config-hash folder, then a long table.

A study declares its runs (:class:`RunSpec`: a row label, a setting label, a seed and the run-config
overrides). Each run lives in ``<runs-dir>/<hash>/`` where the hash is a SHA-256 of the run's
resolved config (without the keys that do not change what it computes: output folder, run name,
cache folder, threads, timeouts); the folder holds ``run.json`` (the study's spec and the resolved
config) and ``results.json``. A run whose ``results.json`` is complete (it parses and, for an
experiment, has its ``final`` summary: :func:`run_complete`) is never run again; a truncated or
partial one is computed again, and an interrupted ATM run resumes from its last checkpoint
(``resume = true``, ``resume-missing = "start"``; a checkpoint whose weights were deleted is
dropped). Every file the runner writes is written atomically (:mod:`atmflow.files`). Fine-tuning is shared
through the clients' cache (``cache-dir``): one-shot methods at one budget fine-tune once.

Every measured number goes into ``results.csv`` as one row: study, setting, method, seed, task,
metric, value and the run folder it came from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from atmflow.config import keys_with_role, load_config
from atmflow.files import atomic_write_text
from atmflow.threads import pin_threads

log = logging.getLogger(__name__)
PRETRAINED, INDIVIDUAL = "pretrained", "individual"


@dataclass(frozen=True)
class Pick:
    """A row of the study read from a run: ``round`` is a round number, or ``pretrained`` / ``individual``
    (the run's round-0 scores / the individually fine-tuned upper bound)."""

    method: str
    setting: str
    round: int | str


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: ``kind`` is ``experiment`` (a full atmflow run) or a study's own probe, called
    with ``params`` as keyword arguments (settings of the probe that are not run-config keys, e.g. a grid
    size; they are part of the run's key)."""

    seed: int
    overrides: Mapping[str, Any]
    picks: tuple[Pick, ...]
    kind: str = "experiment"
    params: Mapping[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        return load_config({**self.overrides, "seed": self.seed}).to_run_config()

    def key(self) -> str:
        outcome = keys_with_role("outcome")
        hashed = {k: v for k, v in self.config().items() if k in outcome}
        content = {"kind": self.kind, "config": hashed, **({"params": dict(self.params)} if self.params else {})}
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cost(self) -> int:
        """Fine-tuning epochs per task if nothing were cached (the progress bar's unit)."""
        cfg = load_config({**self.overrides, "seed": self.seed})
        return cfg.budget_epochs if cfg.strategy == "oneshot" else cfg.rounds * cfg.epochs_per_round


@dataclass
class Row:
    study: str
    setting: str
    method: str
    seed: int
    task: str
    metric: str
    value: float
    run: str


@dataclass
class Settings:
    """Where a study writes (``out``), where its runs are cached (``runs``) and the clients' cache."""

    out: Path
    runs: Path
    cache: Path
    workers: int = 1
    keep_weights: bool = False
    probes: dict[str, Callable[..., dict[str, Any]]] = field(default_factory=dict)


def run_complete(folder: Path, kind: str) -> bool:
    """Whether ``folder/results.json`` parses as a JSON object and, for an experiment, is a finished run
    (has ``final``). A file cut short by a crash or a full disk is not complete."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and (kind != "experiment" or "final" in results)


def _discard_incomplete(folder: Path) -> None:
    """Remove a results.json that is not complete, and a checkpoint whose weights file is gone."""
    done = folder / "results.json"
    if done.exists():
        log.warning("%s is incomplete or unreadable; computing the run again", done)
        done.unlink()
    state = folder / "checkpoint.json"
    try:
        weights = json.loads(state.read_text()).get("weights", "")
    except (OSError, ValueError, AttributeError):
        weights = ""
    if state.exists() and not (weights and (folder / weights).is_file()):
        state.unlink()


def _claim(folder: Path) -> bool:
    """Take the run folder's ``lock`` (this process's id); False while another live process holds it."""
    lock = folder / "lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):  # its holder died: take it over
            lock.unlink(missing_ok=True)
            return _claim(folder)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def execute(spec: RunSpec, settings: Settings, poll_s: float = 10.0) -> Path:
    """Run ``spec`` unless its folder already has ``results.json``; return the folder.

    Studies that share a root may run at the same time: a run being computed by another process
    (its folder's ``lock`` names a live process) is waited for, not computed twice.
    """
    key = spec.key()
    folder = settings.runs / key
    folder.mkdir(parents=True, exist_ok=True)
    while not run_complete(folder, spec.kind):
        if _claim(folder):
            try:
                if not run_complete(folder, spec.kind):  # another process may have finished before we took the lock
                    _discard_incomplete(folder)
                    _compute(spec, settings, folder)
                if not run_complete(folder, spec.kind):
                    raise RuntimeError(f"run {folder} finished without writing a complete results.json")
            finally:
                (folder / "lock").unlink(missing_ok=True)
        else:
            time.sleep(poll_s)
    return folder


def _compute(spec: RunSpec, settings: Settings, folder: Path) -> None:
    key = folder.name
    overrides = {**spec.overrides, "seed": spec.seed, "output-dir": str(settings.runs), "run-name": key,
                 "cache-dir": str(settings.cache), "resume": True, "resume-missing": "start"}
    cfg = load_config(overrides)
    atomic_write_text(folder / "run.json", json.dumps({"kind": spec.kind, "picks": [p.__dict__ for p in spec.picks],
                                                       "params": dict(spec.params), "config": cfg.to_run_config()},
                                                      indent=2))
    if spec.kind == "experiment":
        from atmflow.sim.local import run_inprocess

        run_inprocess(overrides)
    else:
        probe = settings.probes.get(spec.kind)
        if probe is None:
            raise ValueError(f"run kind {spec.kind!r} has no probe; known: experiment, {sorted(settings.probes)}")
        pin_threads(cfg.num_threads)  # as a run's clients and server do: a probe's timing and sums use num-threads
        result = probe(overrides, folder, **spec.params)
        atomic_write_text(folder / "results.json", json.dumps(result, indent=2))
    if not settings.keep_weights:
        for weights in folder.glob("*.safetensors"):
            weights.unlink()


def run_all(specs: Sequence[RunSpec], settings: Settings, label: str) -> tuple[dict[str, Path], int]:
    """Run what is missing, with a progress bar (ETA in fine-tuning epochs per task).

    Runs of one seed run one after the other, in the study's order (so that a run that fills the
    clients' cache comes before those that reuse it); seeds run in parallel on ``workers`` processes.
    Returns ``{run key: folder}`` and how many runs were computed.
    """
    unique = list({s.key(): s for s in specs}.values())
    todo = [s for s in unique if not run_complete(settings.runs / s.key(), s.kind)]
    chains: dict[int, list[RunSpec]] = defaultdict(list)
    for spec in todo:
        chains[spec.seed].append(spec)
    bar = tqdm(total=sum(s.cost() for s in todo), desc=f"{label}: {len(todo)} of {len(unique)} runs to compute",
               unit="epoch", dynamic_ncols=True)
    if settings.workers <= 1 or len(chains) <= 1:
        for spec in todo:
            bar.set_postfix_str(f"seed {spec.seed} {spec.picks[0].method} {spec.picks[0].setting}")
            execute(spec, settings)
            bar.update(spec.cost())
    else:
        with ProcessPoolExecutor(max_workers=settings.workers) as pool:
            pending: dict[Future[Path], tuple[RunSpec, list[RunSpec]]] = {}

            def submit(chain: list[RunSpec]) -> None:
                spec = chain.pop(0)
                pending[pool.submit(execute, spec, settings)] = (spec, chain)

            for chain in chains.values():
                submit(list(chain))
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec, rest = pending.pop(future)
                    future.result()
                    bar.update(spec.cost())
                    if rest:
                        submit(rest)
    bar.close()
    return {s.key(): settings.runs / s.key() for s in unique}, len(todo)


def load_results(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def _scores_of(results: dict[str, Any], pick: Pick) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    if pick.round == PRETRAINED:
        return results["pretrained"]["tasks"], None
    if pick.round == INDIVIDUAL:
        if results["individual"] is None:
            raise ValueError(f"row {pick.method}: the run has no individual scores (individual = false)")
        return results["individual"]["tasks"], None
    rounds = {r["round"]: r for r in results["rounds"]}
    if pick.round not in rounds:
        raise ValueError(f"row {pick.method} ({pick.setting}) reads round {pick.round}, "
                         f"but the run has rounds {sorted(rounds)}")
    record = rounds[pick.round]
    return record["tasks"], record


def pick_epochs(config: Mapping[str, Any], pick: Pick) -> int:
    """Fine-tuning epochs per task behind a row: round K of an ATM run spent K x ``epochs-per-round``; a
    one-shot round, the individual models (and, for want of another budget, the pretrained row) the
    run's ``budget-epochs``."""
    if isinstance(pick.round, int) and config["strategy"] == "atm":
        return pick.round * int(config["epochs-per-round"])
    return int(config["budget-epochs"])


def bound_key(config: Mapping[str, Any], epochs: int) -> str:
    """Which individual models a run of ``config`` would fine-tune for ``epochs`` epochs: the client
    settings and the individual exchange's instructions (what the clients' cache keys them by), so that
    runs of one study that differ only in how they merge share them."""
    from atmflow.strategies.plan import individual_instructions

    cfg = load_config({**config, "budget-epochs": epochs})
    return json.dumps({"client": cfg.client_settings(), "instructions": asdict(individual_instructions(cfg))},
                      sort_keys=True)


def individual_bounds(runs: Iterable[tuple[RunSpec, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{bound_key: per-task individual scores}`` over the experiment runs whose individual models are the
    individual exchange's (each fine-tuned for its run's ``budget-epochs``). PH-ATM runs are left out: their
    individual models are their TA start's fine-tuning, which has another data order (round 0's seed)."""
    bounds = {}
    for spec, results in runs:
        config = spec.config()
        if spec.kind == "experiment" and results.get("individual") and not load_config(config).ph_atm:
            bounds.setdefault(bound_key(config, int(config["budget-epochs"])), results["individual"]["tasks"])
    return bounds


def normalized_rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any],
                    bounds: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """Per row, the normalized accuracy ``mean_t acc_t / acc_t(individual)`` (papers 001 and 004, Eq. 11),
    against individual models fine-tuned for as many epochs as the row spent (:func:`pick_epochs`): a
    PA-ATM30 row divides by 30-epoch individual models. The run's own when they have that budget, else
    those of another run of the study with the same client and fine-tuning settings (:func:`bound_key`,
    ``bounds``: :func:`individual_bounds`); a row whose budget has none gets no normalized accuracy (its
    cell shows "-") rather than a ratio to another budget's models."""
    rows = []
    config = spec.config()
    own = (results.get("individual") or {}).get("tasks")
    for pick in spec.picks:
        epochs = pick_epochs(config, pick)
        individual = own if own and epochs == int(config["budget-epochs"]) else bounds.get(bound_key(config, epochs))
        if individual:
            scores, _ = _scores_of(results, pick)
            value = statistics.fmean(scores[t]["accuracy"] / individual[t]["accuracy"] for t in scores)
            rows.append(Row(study, pick.setting, pick.method, spec.seed, "avg", "normalized", value, folder.name))
    return rows


def experiment_rows(study: str, spec: RunSpec, folder: Path, results: dict[str, Any]) -> list[Row]:
    """Per task: accuracy and loss; per row: the average accuracy, the bytes uploaded up to that round,
    the mean |cosine| between that round's task vectors and lambda (normalized accuracy:
    :func:`normalized_rows`, which needs the study's other runs)."""
    rows: list[Row] = []
    for pick in spec.picks:
        scores, record = _scores_of(results, pick)

        def add(task: str, metric: str, value: float, pick: Pick = pick) -> None:
            rows.append(Row(study, pick.setting, pick.method, spec.seed, task, metric, float(value), folder.name))

        for task, s in sorted(scores.items()):
            add(task, "accuracy", s["accuracy"])
            add(task, "loss", s["loss"])
        add("avg", "accuracy", statistics.fmean(s["accuracy"] for s in scores.values()))
        if record is not None:
            upto = [r for r in results["rounds"] if r["round"] <= record["round"]]
            add("avg", "mb-up-per-task", sum(r["bytes_up"] for r in upto) / len(scores) / 1e6)
            add("avg", "mean-abs-cosine", record["geometry"]["mean_abs_cosine"])
            if "lambda" in record["extra"]:
                add("avg", "lambda", record["extra"]["lambda"])
    return rows


def write_csv(rows: Iterable[Row], path: Path) -> None:
    rows = list(rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study", "setting", "method", "seed", "task", "metric", "value", "run"])
        for r in rows:
            writer.writerow([r.study, r.setting, r.method, r.seed, r.task, r.metric, f"{r.value:.6g}", r.run])
