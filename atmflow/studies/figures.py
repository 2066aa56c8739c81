"""The studies' PNG figures (matplotlib, Agg backend): curves, radar plots and heatmaps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def curves(path: Path, title: str, xlabel: str, ylabel: str,
           series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
           hlines: Mapping[str, float] | None = None, ylim: tuple[float, float] | None = (0, 1),
           log_x: bool = False) -> Path:
    """One line per series ``label -> (xs, means, sds)`` (the sd as a band), and labelled horizontal lines;
    ``log_x``: a logarithmic x axis ticked at the series' x values."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys, sds) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if any(sds):
            ax.fill_between(xs, [y - s for y, s in zip(ys, sds, strict=True)],
                            [y + s for y, s in zip(ys, sds, strict=True)], color=line.get_color(), alpha=0.15)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle=("--", ":", "-.")[i % 3], color=f"C{(i + len(series)) % 10}", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log_x:
        ticks = sorted({x for xs, _, _ in series.values() for x in xs})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def radar(path: Path, title: str, tasks: Sequence[str], series: Mapping[str, Mapping[str, float]]) -> Path:
    """Per-task accuracy of several methods on a polar plot (as paper 001, Fig. 4)."""
    angles = [2 * math.pi * i / len(tasks) for i in range(len(tasks))]
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for label, scores in series.items():
        values = [scores[t] for t in tasks]
        ax.plot([*angles, angles[0]], [*values, values[0]], marker="o", markersize=3, label=label)
    ax.set_xticks(angles, tasks, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.35, 1.1))
    return _save(fig, path)


def heatmaps(path: Path, title: str, labels: Sequence[str], matrices: Mapping[str, Sequence[Sequence[float]]],
             vmin: float, vmax: float, cmap: str = "viridis", fmt: str = ".2f") -> Path:
    """Square matrices side by side, one colour scale, each cell annotated with its value."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.4 * len(matrices) + 1, 4.2), squeeze=False,
                             constrained_layout=True)
    image = None
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color="black")
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return _save(fig, path, tight=False)


def _save(fig: plt.Figure, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
