"""What a study is (its options, its grid of runs, its report) and how one is run end to end.

``run_study`` plans the grid, runs what is missing (:mod:`atmflow.studies.runner`), writes
``results.csv`` (every number, with its seed and run folder), the PNG figures and ``report.md``
(the papers' tables, mean ± standard deviation over seeds) into the study's folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from atmflow.config import ConfigError
from atmflow.files import atomic_write_text
from atmflow.studies import runner
from atmflow.studies.runner import Row, RunSpec, Settings, experiment_rows, load_results, run_all, write_csv
from atmflow.studies.tables import Table, mean_sd

# The study runs' defaults on top of RunConfig's: one CPU thread per run (several runs share the cores).
BASE: dict[str, Any] = {"num-threads": 1}


class StudyOptions(BaseModel):
    """A study's own settings (kebab-case keys, as the run config)."""

    model_config = ConfigDict(alias_generator=lambda n: n.replace("_", "-"), populate_by_name=True,
                              extra="forbid", frozen=True)


def int_list(value: Any) -> tuple[int, ...]:
    """``"2,4,10"``, ``[2, 4, 10]`` or ``10`` -> ``(2, 4, 10)``."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


# A finished run as a report sees it: its spec, its folder and its results.json.
RunOutput = tuple[RunSpec, Path, dict[str, Any]]


@dataclass(frozen=True)
class Study:
    """``plan(options, base overrides, seeds)`` lists the runs; ``report(table, options, runs, figures
    folder)`` returns the Markdown body; ``rows`` turns a probe's results into rows (experiments use
    :func:`experiment_rows`); ``probes`` maps a run kind to the function that computes it:
    ``probe(overrides, folder, **spec.params)``."""

    name: str
    title: str
    options: type[StudyOptions]
    plan: Callable[[Any, dict[str, Any], Sequence[int]], list[RunSpec]]
    report: Callable[[Table, Any, list[RunOutput], Path], str]
    rows: Callable[[str, RunSpec, Path, dict[str, Any]], list[Row]] = experiment_rows
    probes: Mapping[str, Callable[..., dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Outcome:
    out: Path
    runs: int
    computed: int
    rows: list[Row]


def round_curves(runs: list[RunOutput], label: Callable[[RunSpec], str | None], x_in_epochs: bool = False
                 ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Average test accuracy after each round (round 0: the starting model) of the runs that ``label`` names, as
    ``label -> (x, mean over seeds, sd)``; x is the round, or the epochs per task spent (``x_in_epochs``)."""
    points: dict[str, dict[float, list[float]]] = {}
    for spec, _, results in runs:
        name = label(spec) if spec.kind == "experiment" else None
        if name is None:
            continue
        step = results["config"]["epochs-per-round"] if x_in_epochs else 1
        curve = points.setdefault(name, {})
        start = results["init"] or results["pretrained"]  # PH-ATM starts from its TA-merged model
        curve.setdefault(0.0, []).append(start["avg_accuracy"])
        for r in results["rounds"]:
            curve.setdefault(float(r["round"] * step), []).append(r["avg_accuracy"])
    return {name: (sorted(curve), *mean_sd([curve[x] for x in sorted(curve)])) for name, curve in points.items()}


def parse_options(study: Study, options: Mapping[str, Any]) -> StudyOptions:
    try:
        return study.options.model_validate(dict(options))
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']} (got {e.get('input')!r})"
                 for e in err.errors()]
        fields = ", ".join(f.alias or n for n, f in study.options.model_fields.items())
        raise ConfigError(f"invalid options for study {study.name!r} (its keys: {fields}):\n"
                          + "\n".join(lines)) from None


def run_study(study: Study, *, seeds: Sequence[int], root: Path, out: Path | None = None,
              run_config: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
              workers: int = 1, keep_weights: bool = False, command: str = "") -> Outcome:
    """Plan, run what is missing, and write ``results.csv``, ``figures/*.png`` and ``report.md``."""
    started = time.perf_counter()
    opts = parse_options(study, options or {})
    base = {**BASE, **(run_config or {})}
    specs = study.plan(opts, base, list(seeds))
    out = (out or root / study.name).resolve()
    settings = Settings(out=out, runs=(root / "runs").resolve(), cache=(root / "cache").resolve(),
                        workers=workers, keep_weights=keep_weights, probes=dict(study.probes))
    folders, computed = run_all(specs, settings, study.name)
    rows: list[Row] = []
    runs: list[RunOutput] = [(spec, folders[spec.key()], load_results(folders[spec.key()])) for spec in specs]
    bounds = runner.individual_bounds((spec, results) for spec, _, results in runs)
    for spec, folder, results in runs:
        rows += study.rows(study.name, spec, folder, results)
        if spec.kind == "experiment":
            rows += runner.normalized_rows(study.name, spec, folder, results, bounds)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    body = study.report(Table(rows), opts, runs, out / "figures")
    seeds_text = ", ".join(str(s) for s in sorted(set(seeds)))
    lines = [
        f"# Study `{study.name}`: {study.title}", "",
        f"Seeds {seeds_text}; cells are mean ± standard deviation over seeds (one seed: the value). "
        f"Run config on top of the defaults: `{json.dumps(base, sort_keys=True)}`; study options: "
        f"`{json.dumps(opts.model_dump(mode='json', by_alias=True), sort_keys=True)}`.", "",
        body, "",
        f"Every number is in `results.csv` with the run folder it came from (`{settings.runs}/<run>/`: "
        f"`run.json` holds the run's config, `results.json` what it measured). {len(folders)} runs, "
        f"{computed} computed by this invocation, {time.perf_counter() - started:.0f} s."
        + (f" Command: `{command}`." if command else ""), "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return Outcome(out, len(folders), computed, rows)
