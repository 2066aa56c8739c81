"""Reading a study's long table: cells as mean ± standard deviation over seeds, and honest comparisons.

A difference between two rows is called real only when it is larger than the seed spread: the
larger of the two rows' standard deviations over seeds (with one seed there is no spread, and the
text says so).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from atmflow.studies.runner import Row


class Table:
    """``(setting, method, task, metric) -> {seed: value}`` over a study's rows."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.rows = list(rows)
        self._cells: dict[tuple[str, str, str, str], dict[int, float]] = defaultdict(dict)
        for r in self.rows:
            self._cells[(r.setting, r.method, r.task, r.metric)][r.seed] = r.value

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.rows})

    def tasks(self) -> list[str]:
        """The task names (not the "avg" pseudo-task), sorted."""
        return sorted({r.task for r in self.rows if r.metric == "accuracy" and r.task != "avg"})

    def values(self, setting: str, method: str, task: str = "avg", metric: str = "accuracy") -> list[float]:
        cell = self._cells.get((setting, method, task, metric), {})
        return [cell[s] for s in sorted(cell)]

    def has(self, setting: str, method: str, task: str = "avg", metric: str = "accuracy") -> bool:
        return bool(self.values(setting, method, task, metric))

    def mean(self, setting: str, method: str, task: str = "avg", metric: str = "accuracy") -> float:
        values = self.values(setting, method, task, metric)
        return statistics.fmean(values) if values else float("nan")

    def cell(self, setting: str, method: str, task: str = "avg", metric: str = "accuracy", digits: int = 3) -> str:
        return fmt(self.values(setting, method, task, metric), digits)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sd`` over seeds (just the mean for one seed; ``-`` for none)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean_sd(cells: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Means and standard deviations (0 for one seed) of several cells' values over seeds, for a plot."""
    return ([statistics.fmean(v) for v in cells], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in cells])


def spread(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float]) -> str:
    """One sentence: the difference of the means and whether it exceeds the seed spread."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    spreads = [s for s in (spread(a), spread(b)) if s is not None]
    if not spreads:
        verdict = "one seed, so no spread to judge it against"
    elif abs(diff) > max(spreads):
        verdict = f"larger than the seed spread ({max(spreads):.3f})"
    else:
        verdict = f"**within the seed spread** ({max(spreads):.3f}): not a difference at this scale"
    return f"{name_a} − {name_b} = {diff:+.3f}, {verdict}"


def markdown(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def method_table(table: Table, setting: str, methods: Sequence[str], extra: Sequence[tuple[str, str]] = ()) -> str:
    """Paper layout: one row per method, a column per task, then the average; ``extra`` adds
    ``(metric, header)`` columns (normalized accuracy, MB uploaded, mean |cos|, ...)."""
    tasks = table.tasks()
    header = ["method", *tasks, "average", *(h for _, h in extra)]
    body = []
    for m in methods:
        if not table.has(setting, m):
            continue
        cells = [table.cell(setting, m, t) for t in tasks]
        body.append([m, *cells, f"**{table.cell(setting, m)}**",
                     *(table.cell(setting, m, "avg", metric) for metric, _ in extra)])
    return markdown(header, body)
