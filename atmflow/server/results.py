"""What a run measured, and how it is written: ``results.json``, ``report.md`` and PNG plots.

The per-round records and the accuracy summaries are in :mod:`atmflow.rounds.records`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atmflow.data.glue import GLUE_TASKS
from atmflow.files import atomic_write_text
from atmflow.privacy.scope import SECURE_MODES
from atmflow.protocol import DP_DELTA, DP_EPSILON, DP_NOISE_MULTIPLIER
from atmflow.rounds.records import RoundRecord, Scores, avg_accuracy, normalized_accuracy
from atmflow.server.provenance import header_lines

METRIC_NAMES = {"accuracy": "accuracy", "matthews": "Matthews correlation", "f1": "F1"}


def official_metric_table(tasks: list[str], rows: list[tuple[str, Scores]]) -> list[str]:
    """GLUE's official metric of each GLUE task in ``tasks`` (Wang et al. 2019, Table 1: Matthews
    correlation for CoLA, F1 of the positive class for MRPC and QQP, accuracy for SST-2, MNLI, QNLI, RTE),
    one row per model, as Markdown lines; no lines when no task is a GLUE task. A score without the metric
    (e.g. from a run before the nodes sent it) shows as "-"."""
    glue = [t for t in tasks if t in GLUE_TASKS]
    if not glue:
        return []
    metric = {t: GLUE_TASKS[t].metric for t in glue}
    lines = ["| model | " + " | ".join(f"{t} ({METRIC_NAMES[metric[t]]})" for t in glue) + " |",
             "|" + "---|" * (len(glue) + 1)]
    for name, scores in rows:
        cells = [f"{scores[t][metric[t]]:.3f}" if metric[t] in scores.get(t, {}) else "-" for t in glue]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return ["", "GLUE's official metric per task (same predictions as the accuracies above):", "", *lines]


@dataclass
class RunResults:
    strategy: str
    label: str
    config: dict[str, Any]
    pretrained: Scores
    rounds: list[RoundRecord]
    individual: Scores | None = None
    init: RoundRecord | None = None  # PH-ATM's starting point (the TA-merged model), if built here
    wall_s: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, code, machine, model, head (provenance.py)

    def final(self) -> dict[str, Any]:
        last = self.rounds[-1].tasks
        out: dict[str, Any] = {"tasks": last, "avg_accuracy": avg_accuracy(last),
                               "bytes_per_client_round": self.bytes_per_client_round()}
        if self.individual:
            out["normalized_accuracy"] = normalized_accuracy(last, self.individual)
        return out

    def bytes_per_client_round(self) -> float:
        """Mean bytes one client uploaded in one round (its encoded task vector and any gradients)."""
        sizes = [b for r in self.rounds for b in r.bytes_up_per_task.values()]
        return sum(sizes) / max(1, len(sizes))

    def to_json(self) -> dict[str, Any]:
        def summary(scores: Scores | None) -> dict[str, Any] | None:
            return None if scores is None else {"tasks": scores, "avg_accuracy": avg_accuracy(scores)}

        rounds = []
        for r in self.rounds:
            row = asdict(r)
            if self.individual:
                row["normalized_accuracy"] = normalized_accuracy(r.tasks, self.individual)
            rounds.append(row)
        return {
            "strategy": self.strategy,
            "label": self.label,
            "config": self.config,
            "pretrained": summary(self.pretrained),
            "individual": summary(self.individual),
            "init": None if self.init is None else asdict(self.init),
            "rounds": rounds,
            "final": self.final(),
            "dp_epsilon": self.epsilon_spent(),
            "wall_s": self.wall_s,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        def scores(entry: dict[str, Any] | None) -> Scores | None:
            return None if entry is None else entry["tasks"]

        def record(row: dict[str, Any]) -> RoundRecord:
            return RoundRecord(**{k: v for k, v in row.items() if k != "normalized_accuracy"})

        return cls(data["strategy"], data["label"], data["config"], scores(data["pretrained"]) or {},
                   [record(r) for r in data["rounds"]], scores(data["individual"]),
                   None if data["init"] is None else record(data["init"]), data["wall_s"],
                   data.get("provenance") or {})

    @property
    def head(self) -> str:
        """The head actually used (``auto`` resolved; from the provenance, else the configured name)."""
        return str(self.provenance.get("head") or self.config.get("head", "?"))

    def row_name(self, record: RoundRecord) -> str:
        """A one-shot method's single round is named by the method (``TA``), an iterative round by its number."""
        return self.label if self.strategy == "oneshot" and len(self.rounds) == 1 else f"round {record.round}"

    def epsilon_spent(self) -> dict[str, dict[str, float]]:
        """Under ``privacy = "dp"``: ``{row: {task: epsilon}}``, the epsilon each task's client had spent in the
        run after each round (rows named as in the report) and after its individual fine-tuning; {} without DP."""
        rows = {self.row_name(r): {t: m[DP_EPSILON] for t, m in r.train.items() if DP_EPSILON in m}
                for r in self.rounds}
        if self.individual:
            rows["individual"] = {t: s[DP_EPSILON] for t, s in self.individual.items() if DP_EPSILON in s}
        return rows if any(rows.values()) else {}

    def privacy_table(self) -> list[str]:
        """:meth:`epsilon_spent` as Markdown lines, with each task's delta and noise multiplier; none without DP."""
        spent = self.epsilon_spent()
        if not spent:
            return []
        tasks = list(self.pretrained)
        lines = ["| after | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        lines += [f"| {name} | " + " | ".join(f"{eps[t]:.2f}" if t in eps else "-" for t in tasks) + " |"
                  for name, eps in spent.items()]
        setting = "; ".join(f"{t}: delta {m[DP_DELTA]:.2g}, noise multiplier {m[DP_NOISE_MULTIPLIER]:.3f}"
                            for t, m in sorted(self.rounds[0].train.items()) if DP_DELTA in m)
        return ["", f"Differential privacy (DP-SGD, clipping norm {self.config.get('dp-max-grad-norm')}): epsilon "
                    f"spent by each task's client in the whole run so far ({setting}). See docs/privacy.md.",
                "", *lines]

    def individual_note(self) -> list[str]:
        """What the individual models are, and whether they bound the merged ones here."""
        if not self.individual:
            return []
        above = avg_accuracy(self.individual) > avg_accuracy(self.pretrained)
        bound = ("above the pretrained model, so an upper bound for merging" if above else
                 "not above the pretrained model here, so not an upper bound (too little data or budget?)")
        epochs = self.config.get("budget-epochs", "budget-epochs")
        return ["", f"\"individual\": each task's own model, fine-tuned from the pretrained one for {epochs} epochs "
                    f"(budget-epochs); {bound}. Normalized accuracy = accuracy / the individual model's (a round "
                    "that spent another number of epochs compares two budgets)."]

    def geometry_line(self) -> str:
        """The last round's mean |cosine| between task vectors, or why there is none (secure aggregation:
        the server saw only their sum, docs/privacy.md)."""
        if self.config.get("privacy", "none") in SECURE_MODES:
            return (f"Privacy `{self.config['privacy']}`: the server saw only the sum of each round's task vectors "
                    "(SecAgg+); bytes are what each node sent over its four stages; no per-task norms or cosines.")
        cosine = self.rounds[-1].geometry.get("mean_abs_cosine", float("nan"))
        return f"Mean |cosine| between the last round's task vectors: {cosine:.3f}."

    def report(self) -> str:
        """A Markdown table a person reads in ten seconds."""
        tasks = list(self.pretrained)
        rows: list[tuple[str, Scores]] = [("pretrained", self.pretrained)]
        if self.init is not None:
            rows.append(("start: TA-merged", self.init.tasks))
        rows += [(self.row_name(r), r.tasks) for r in self.rounds]
        if self.individual:
            rows.append(("individual", self.individual))
        lines = ["| model | " + " | ".join(tasks) + " | avg | normalized |", "|" + "---|" * (len(tasks) + 3)]
        for name, scores in rows:
            cells = " | ".join(f"{scores[t]['accuracy']:.3f}" if t in scores else "-" for t in tasks)
            norm = f"{normalized_accuracy(scores, self.individual):.3f}" if self.individual else "-"
            lines.append(f"| {name} | {cells} | {avg_accuracy(scores):.3f} | {norm} |")
        c, final = self.config, self.final()
        rounds = len(self.rounds)
        plan = (f"1 round of {c['budget-epochs']} epochs" if self.strategy == "oneshot"
                else f"{rounds} round{'s' if rounds != 1 else ''} x {c['epochs-per-round']} epoch(s)")
        skipped = {t: why for r in self.rounds for t, why in r.missing.items()}
        lam = self.rounds[-1].extra.get("lambda")
        return "\n".join([
            f"# atmflow run `{c['run-name']}`: {self.label}",
            "",
            *header_lines(self.provenance),
            *([""] if self.provenance else []),
            f"Tasks: {', '.join(tasks)}. Plan: {plan}; merge `{self.rounds[-1].extra.get('merge', '?')}`"
            + (f" with lambda {lam:g}" if lam is not None else "") + f". Seed {c['seed']}. Head: {self.head}. "
            f"Wall time {self.wall_s:.0f} s. Uploaded in the last round: {self.rounds[-1].bytes_up / 1e6:.1f} MB "
            f"({self.bytes_per_client_round() / 1e6:.2f} MB per client per round on average; fine-tuning "
            f"`{c.get('finetune', 'full')}`, transport `{c.get('transport-dtype', 'float32')}`). "
            + self.geometry_line(),
            "",
            "Test accuracy per task (each task's frozen head on the merged encoder):",
            "",
            *lines,
            "",
            f"Final average accuracy **{final['avg_accuracy']:.3f}**"
            + (f", normalized accuracy **{final['normalized_accuracy']:.3f}**." if "normalized_accuracy" in final
               else "."),
            *self.individual_note(),
            *self.privacy_table(),
            *official_metric_table(tasks, rows),
            *(["", f"Tasks skipped in some round: {skipped}."] if skipped else []),
            "",
        ])

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "results.json", json.dumps(self.to_json(), indent=2))
        atomic_write_text(folder / "report.md", self.report())
        self.plot(folder / "accuracy.png")

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [0] + [r.round for r in self.rounds]
        for task in self.pretrained:
            ys = [self.pretrained[task]["accuracy"]] + [r.tasks.get(task, {}).get("accuracy", float("nan"))
                                                         for r in self.rounds]
            ax.plot(xs, ys, marker="o", label=task)
        ys = [avg_accuracy(self.pretrained)] + [r.avg_accuracy for r in self.rounds]
        ax.plot(xs, ys, marker="s", color="black", linewidth=2, label="average")
        if self.individual:
            ax.axhline(avg_accuracy(self.individual), color="black", linestyle="--", label="individual (avg)")
        ax.set(xlabel="round (0 = pretrained)", ylabel="test accuracy", ylim=(0, 1),
               title=f"{self.label}: {self.config['run-name']}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
