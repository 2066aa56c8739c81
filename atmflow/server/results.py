"""What a run measured, and how it is written: ``results.json``, ``report.md`` and a PNG plot.

Normalized accuracy (paper 004, Eq. 11; Ilharco et al.): per task, merged accuracy divided by the
task's individually fine-tuned accuracy, averaged over tasks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Scores = dict[str, dict[str, float]]  # task -> {"accuracy": .., "loss": ..}


def avg_accuracy(scores: Scores) -> float:
    return sum(s["accuracy"] for s in scores.values()) / len(scores)


def normalized_accuracy(scores: Scores, individual: Scores) -> float:
    return sum(scores[t]["accuracy"] / individual[t]["accuracy"] for t in scores) / len(scores)


@dataclass
class RoundRecord:
    """One server round: the merged model's per-task test scores and what the round cost."""

    round: int
    tasks: Scores
    avg_accuracy: float
    wall_s: float
    bytes_up: int
    bytes_up_per_task: dict[str, int]
    train: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResults:
    strategy: str
    config: dict[str, Any]
    pretrained: Scores
    rounds: list[RoundRecord]
    individual: Scores | None
    wall_s: float

    def final(self) -> dict[str, Any]:
        last = self.rounds[-1].tasks
        out: dict[str, Any] = {"tasks": last, "avg_accuracy": avg_accuracy(last)}
        if self.individual:
            out["normalized_accuracy"] = normalized_accuracy(last, self.individual)
        return out

    def to_json(self) -> dict[str, Any]:
        summary = lambda s: None if s is None else {"tasks": s, "avg_accuracy": avg_accuracy(s)}  # noqa: E731
        return {
            "strategy": self.strategy,
            "config": self.config,
            "pretrained": summary(self.pretrained),
            "individual": summary(self.individual),
            "rounds": [asdict(r) for r in self.rounds],
            "final": self.final(),
            "wall_s": self.wall_s,
        }

    def report(self) -> str:
        """A Markdown table a person reads in ten seconds."""
        tasks = list(self.pretrained)
        rows: list[tuple[str, Scores]] = [("pretrained", self.pretrained)]
        rows += [(f"round {r.round}", r.tasks) for r in self.rounds]
        if self.individual:
            rows.append(("individual (upper bound)", self.individual))
        head = "| model | " + " | ".join(tasks) + " | avg | normalized |"
        lines = [head, "|" + "---|" * (len(tasks) + 3)]
        for name, scores in rows:
            norm = f"{normalized_accuracy(scores, self.individual):.3f}" if self.individual else "-"
            cells = " | ".join(f"{scores[t]['accuracy']:.3f}" for t in tasks)
            lines.append(f"| {name} | {cells} | {avg_accuracy(scores):.3f} | {norm} |")
        final = self.final()
        c = self.config
        budget = f"{c['budget-epochs']} epochs per task"
        plan = "1 round" if self.strategy == "ta" else f"{len(self.rounds)} rounds x {c['epochs-per-round']} epoch(s)"
        return "\n".join([
            f"# atmflow run `{c['run-name']}`: {self.strategy}",
            "",
            f"Tasks: {', '.join(tasks)}. Budget: {budget} ({plan}). Seed {c['seed']}. "
            f"Head: {c['head']}. Wall time {self.wall_s:.0f} s. "
            f"Uploaded per round: {self.rounds[-1].bytes_up / 1e6:.1f} MB.",
            "",
            "Test accuracy per task (each task's frozen head on the merged encoder):",
            "",
            *lines,
            "",
            f"Final average accuracy **{final['avg_accuracy']:.3f}**"
            + (f", normalized accuracy **{final['normalized_accuracy']:.3f}**." if "normalized_accuracy" in final
               else "."),
            "",
        ])

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(self.to_json(), indent=2))
        (folder / "report.md").write_text(self.report())
        self.plot(folder / "accuracy.png")

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [0] + [r.round for r in self.rounds]
        for task in self.pretrained:
            ys = [self.pretrained[task]["accuracy"]] + [r.tasks[task]["accuracy"] for r in self.rounds]
            ax.plot(xs, ys, marker="o", label=task)
        ys = [avg_accuracy(self.pretrained)] + [r.avg_accuracy for r in self.rounds]
        ax.plot(xs, ys, marker="s", color="black", linewidth=2, label="average")
        if self.individual:
            ax.axhline(avg_accuracy(self.individual), color="black", linestyle="--", label="individual (avg)")
        ax.set(xlabel="round (0 = pretrained)", ylabel="test accuracy", ylim=(0, 1),
               title=f"{self.strategy}: {self.config['run-name']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
