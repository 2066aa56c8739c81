"""Weight-disentanglement error of two task vectors (paper 004, Eq. 10 and Fig. 2; Ortiz-Jimenez et al. 2023).

    xi(alpha_1, alpha_2) = sum_{t=1,2} E_{x in D_t} [ dist( f_t(x; theta_0 + alpha_t tau_t),
                                                           f_t(x; theta_0 + alpha_1 tau_1 + alpha_2 tau_2) ) ]

with ``dist(y_1, y_2) = 1(y_1 != y_2)`` on the predicted classes and ``f_t`` the encoder with task
t's frozen head: how often adding the other task's vector changes a task's predictions. (Eq. 10 as
printed compares with ``theta_0 + alpha_1 tau_1`` for both tasks; we use Ortiz-Jimenez et al.'s
definition it cites, where task t's own model is ``theta_0 + alpha_t tau_t``.) 0 = perfectly
disentangled; the maximum is 2. The paper evaluates a 20 x 20 grid over ``[-3, 3]^2`` on 2,048 test
points per task drawn at random (A.1); ``--grid`` and ``--examples`` set both here, and the points are a
uniformly random subset of each task's test split drawn with the run's ``seed`` (:func:`seeded_subset`:
the same points for every grid cell and fine-tuning mode; all of them when the split is smaller).

Usage: ``atmflow disentanglement [--tasks mnist fashion-mnist] [--finetune full talos] [--grid 20]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when the analysis runs, so that the CLI starts fast
    import torch

KIND = "disentanglement"  # the talos study's probe


def grid_values(points: int, limit: float = 3.0) -> list[float]:
    """``points`` equispaced values in ``[-limit, limit]``."""
    import torch

    return torch.linspace(-limit, limit, points).tolist()


def disentanglement_error(predict: Any, tau1: dict[str, torch.Tensor], tau2: dict[str, torch.Tensor],
                          alphas: list[float]) -> torch.Tensor:
    """The ``[len(alphas), len(alphas)]`` matrix xi[i, j] = xi(alphas[i], alphas[j]).

    ``predict(delta, t)`` returns task ``t``'s (0 or 1) predicted classes on its examples for the
    weights ``theta_0 + delta`` (delta: a dict of tensors to add, maybe empty)."""
    import torch

    from atmflow.merging import add_scaled

    def scaled(tau: dict[str, torch.Tensor], a: float) -> dict[str, torch.Tensor]:
        return {k: a * v for k, v in tau.items()}

    own = [[predict(scaled(tau, a), t) for a in alphas] for t, tau in enumerate((tau1, tau2))]
    xi = torch.zeros(len(alphas), len(alphas), dtype=torch.float64)
    for i, a1 in enumerate(alphas):
        for j, a2 in enumerate(alphas):
            both = add_scaled(scaled(tau1, a1), tau2, a2)
            xi[i, j] = sum((predict(both, t) != own[t][k]).double().mean() for t, k in ((0, i), (1, j)))
    return xi


def seeded_subset(size: int, examples: int, seed: int) -> torch.Tensor:
    """Indices of ``min(examples, size)`` test points drawn uniformly without replacement with ``seed``,
    in ascending order (a seeded random subset, not the first ``examples``)."""
    import torch

    if examples >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:examples].sort().values


def predictor(tv: Any, tasks: list[str], examples: int) -> Any:
    """``predict(delta, t)`` for :func:`disentanglement_error` on ``examples`` test points of each task, a
    random subset drawn with the run's seed (:func:`seeded_subset`)."""
    import torch

    from atmflow.client.task import encode, local_task
    from atmflow.models.family import get_family

    cfg = tv.cfg
    locals_ = [local_task(t, cfg) for t in tasks]
    points = [seeded_subset(len(local.data.test), examples, cfg.seed) for local in locals_]
    encoder = get_family(cfg).pretrained_encoder().to(cfg.dtype)

    def predict(delta: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        weights = {k: v + delta[k].to(v.dtype) if k in delta else v for k, v in tv.pretrained.items()}
        encoder.load_state_dict(weights)
        local = locals_[t]
        features = encode(encoder, local.data.test.x[points[t]], local.device)  # encode casts images only
        with torch.no_grad():
            return local.head(features.to(local.device)).argmax(-1).cpu()

    return predict


def measure(tv: Any, tasks: list[str], grid: int, limit: float, examples: int) -> dict[str, Any]:
    """xi over a ``grid`` x ``grid`` grid in ``[-limit, limit]^2`` for the task pair ``tasks`` of ``tv``
    (:class:`~atmflow.analyses.finetuned.TaskVectors`; two of its tasks: the callers check), on ``examples``
    test points per task."""
    alphas = grid_values(grid, limit)
    xi = disentanglement_error(predictor(tv, tasks, examples), tv.vectors[tasks[0]], tv.vectors[tasks[1]], alphas)
    return {"tasks": list(tasks), "alphas": alphas, "xi": xi.tolist(), "mean_xi": float(xi.mean())}


def run_probe(overrides: dict[str, Any], folder: Path, tasks: list[str], grid: int, limit: float,
              examples: int) -> dict[str, Any]:
    """The ``talos`` study's disentanglement probe: :func:`measure` on the run's task vectors (the clients'
    cache of the study's TA run)."""
    from atmflow.analyses.finetuned import finetuned_task_vectors
    from atmflow.config import load_config

    cfg = load_config(overrides)
    return {"kind": KIND, "config": cfg.to_run_config(),
            **measure(finetuned_task_vectors(cfg), list(tasks), grid, limit, examples)}


def plot(results: dict[str, dict[str, Any]], path: Path,
         title: str = "weight-disentanglement error xi (lighter = more disentangled)") -> None:
    """One heatmap of ``xi`` per fine-tuning mode (``results``: mode -> :func:`measure`'s result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (mode, r) in zip(axes[0], results.items(), strict=True):
        a = r["alphas"]
        transposed = [list(column) for column in zip(*r["xi"], strict=True)]  # rows: alpha_2, for origin="lower"
        image = ax.imshow(transposed, origin="lower", extent=(a[0], a[-1], a[0], a[-1]),
                          vmin=0, vmax=2, cmap="viridis_r")
        ax.set(title=f"{mode}: mean xi {r['mean_xi']:.3f}", xlabel=f"alpha_1 ({r['tasks'][0]})",
               ylabel=f"alpha_2 ({r['tasks'][1]})")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from atmflow.analyses.finetuned import finetuned_task_vectors
    from atmflow.analyses.negation import analysis_config

    results: dict[str, dict[str, Any]] = {}
    for mode in args.finetune:
        cfg = analysis_config(args, mode)
        tasks = list(args.tasks or cfg.tasks[:2])
        if len(tasks) != 2 or any(t not in cfg.tasks for t in tasks):
            raise SystemExit(f"--tasks needs two of the run's tasks {list(cfg.tasks)}, got {tasks}")
        results[mode] = measure(finetuned_task_vectors(cfg), tasks, args.grid, args.limit, args.examples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "disentanglement.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "disentanglement.png")
    for mode, r in results.items():
        print(f"{mode}: mean xi over the {args.grid}x{args.grid} grid in [-{args.limit:g}, {args.limit:g}]^2 "
              f"= {r['mean_xi']:.3f} ({r['tasks'][0]}, {r['tasks'][1]})")
    print(f"heatmap: {out / 'disentanglement.png'}")
    return 0


def add_disentanglement_command(sub: Any) -> None:
    from atmflow.analyses.negation import add_common_options

    parser = sub.add_parser("disentanglement", help="weight-disentanglement error xi(alpha_1, alpha_2) heatmap "
                            "(paper 004, Eq. 10)", description=__doc__)
    add_common_options(parser, "outputs/disentanglement")
    parser.add_argument("--tasks", nargs=2, default=None, help="the task pair (default: the first two tasks)")
    parser.add_argument("--grid", type=int, default=20, help="grid points per axis (paper: 20)")
    parser.add_argument("--limit", type=float, default=3.0, help="the grid spans [-limit, limit] (paper: 3)")
    parser.add_argument("--examples", type=int, default=2048,
                        help="test points per task, a random subset drawn with the run's seed (paper: 2,048)")
    parser.set_defaults(func=run)
