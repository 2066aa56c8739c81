"""Task negation (paper 004, Section 5 "Task Negation" and A.1; Ortiz-Jimenez et al. 2023).

Forgetting a target task t: ``theta = theta_0 - alpha * tau_t``. alpha is chosen on the validation
splits from ``{0, 0.05, ..., 1.0}``, stretched by ``1 / (1 - s)`` for TaLoS task vectors of sparsity
``s`` (A.1: sparse task vectors have lower norm; ``s = 0.9`` gives ``{0, 0.5, ..., 10}``): among the
values that keep the control task's validation accuracy at >= 95% of the pretrained model's, the one
with the lowest target validation accuracy (ties: the largest alpha). Reported: target and control
test accuracy of the pretrained and the negated model.

Control task on the embedded benchmark (the papers use ImageNet, a broad task none of the targets
is): ``animal-mnist``, held fixed, and the other three tasks are the targets. Not a digit task:
``mnist`` and ``digits`` are the same kind of task, so neither is a fair control for the other.

Usage: ``atmflow negate [--finetune full talos] [--control animal-mnist] [--run-config ...]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from atmflow.config import COEFFICIENT_GRID, coefficient_grid

CONTROL_KEEP = 0.95
KIND = "negation"  # the talos study's probe


def choose_alpha(curve: list[dict[str, float]], control_floor: float) -> dict[str, float]:
    """The entry (alpha, target, control accuracies) with the lowest target accuracy among those whose
    control accuracy is >= ``control_floor``; ties go to the largest alpha."""
    allowed = [c for c in curve if c["control"] >= control_floor]
    if not allowed:
        raise ValueError(f"no alpha keeps the control accuracy at >= {control_floor:.3f}; include alpha = 0")
    return min(allowed, key=lambda c: (c["target"], -c["alpha"]))


def negate(tv: Any, target: str, control: str) -> dict[str, Any]:
    """Negate ``target``'s task vector from the pretrained weights (``tv``: :class:`TaskVectors`)."""
    from atmflow.merging import add_scaled

    cfg = tv.cfg
    evaluate = tv.evaluator([target, control])
    before_val = evaluate(tv.pretrained, "validation")
    curve = []
    for alpha in coefficient_grid(COEFFICIENT_GRID, cfg.finetune, cfg.talos_sparsity):
        scores = evaluate(add_scaled(tv.pretrained, tv.vectors[target], -alpha), "validation")
        curve.append({"alpha": alpha, "target": scores[target]["accuracy"], "control": scores[control]["accuracy"]})
    best = choose_alpha(curve, CONTROL_KEEP * before_val[control]["accuracy"])
    before = evaluate(tv.pretrained, "test")
    after = evaluate(add_scaled(tv.pretrained, tv.vectors[target], -best["alpha"]), "test")
    return {"target": target, "control": control, "alpha": best["alpha"],
            "target_pretrained": before[target]["accuracy"], "target_negated": after[target]["accuracy"],
            "control_pretrained": before[control]["accuracy"], "control_negated": after[control]["accuracy"],
            "validation_curve": curve}


def negate_all(tv: Any, control: str) -> list[dict[str, Any]]:
    """:func:`negate` for every task but ``control`` (one of the run's tasks: the callers check)."""
    return [negate(tv, t, control) for t in tv.cfg.tasks if t != control]


def run_probe(overrides: dict[str, Any], folder: Path, control: str) -> dict[str, Any]:
    """The ``talos`` study's negation probe: :func:`negate_all` on the run's task vectors (the clients' cache
    of the study's TA run)."""
    from atmflow.analyses.finetuned import finetuned_task_vectors
    from atmflow.config import load_config

    cfg = load_config(overrides)
    return {"kind": KIND, "config": cfg.to_run_config(), "control": control,
            "targets": negate_all(finetuned_task_vectors(cfg), control)}


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| fine-tuning | target | alpha | target acc. pretrained -> negated | "
             "control acc. pretrained -> negated (control task) |", "|---|---|---:|---|---|"]
    for mode, rows in results.items():
        for r in rows:
            lines.append(f"| {mode} | {r['target']} | {r['alpha']:g} | {r['target_pretrained']:.3f} -> "
                         f"{r['target_negated']:.3f} | {r['control_pretrained']:.3f} -> {r['control_negated']:.3f} "
                         f"({r['control']}) |")
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in
                ("target_pretrained", "target_negated", "control_pretrained", "control_negated")}
        lines.append(f"| {mode} | **mean** | | {mean['target_pretrained']:.3f} -> **{mean['target_negated']:.3f}** | "
                     f"{mean['control_pretrained']:.3f} -> {mean['control_negated']:.3f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from atmflow.analyses.finetuned import finetuned_task_vectors

    results: dict[str, list[dict[str, Any]]] = {}
    for mode in args.finetune:
        cfg = analysis_config(args, mode)
        if args.control not in cfg.tasks:
            raise SystemExit(f"--control {args.control!r} is not one of the run's tasks {list(cfg.tasks)}")
        results[mode] = negate_all(finetuned_task_vectors(cfg), args.control)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "negation.json").write_text(json.dumps(results, indent=2))
    text = table(results) + "\n"
    (out / "negation.md").write_text(text)
    print(text)
    return 0


def analysis_config(args: argparse.Namespace, mode: str) -> Any:
    """The run config of an analysis command: the app's defaults, ``--run-config``, the fine-tuning mode
    and the clients' cache folder (one folder serves every mode and seed: its keys cover both; the default
    is the studies' cache, so the ``talos`` study's fine-tuning is reused)."""
    from atmflow.app_config import parse_overrides, resolve_config

    overrides = {**parse_overrides(args.run_config), "finetune": mode, "cache-dir": args.cache_dir}
    return resolve_config(Path(args.project), overrides)


def add_common_options(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--finetune", nargs="+", choices=("full", "talos"), default=["full", "talos"],
                        help="fine-tuning modes whose task vectors are analysed")
    parser.add_argument("--project", default=".", help="folder of the Flower app's pyproject.toml (defaults)")
    parser.add_argument("--run-config", default="", help="overrides, as for flwr run: \"key=value key2='text'\"")
    parser.add_argument("--cache-dir", default="outputs/studies/cache",
                        help="client cache (reuses the fine-tuning of earlier runs with the same settings)")
    parser.add_argument("--out", default=out, help="where the results go")


def add_negate_command(sub: Any) -> None:
    parser = sub.add_parser("negate", help="task negation: theta_0 - alpha * tau_t (paper 004, Section 5)",
                            description=__doc__)
    add_common_options(parser, "outputs/negation")
    parser.add_argument("--control", default="animal-mnist", help="the control task (kept at >= 95%%)")
    parser.set_defaults(func=run)
