"""Benchmark of the merge operators on synthetic checkpoints with the real shapes of a CLIP visual tower.

For each method, two measurements, each in a fresh subprocess (so that its peak RSS is its own):

* **ours**: ``atmflow.merging.merge_checkpoints``, streaming tensor by tensor from the safetensors files;
* **reference**: a straightforward implementation that flattens every checkpoint into one ``n x d``
  matrix, as the official TIES code does (``torch.kthvalue`` per row for TIES; Omega by FusionBench's
  double loop over task pairs and a full sort for TATR), with the same conventions as ours, so that
  both outputs can be compared (last two columns).

Wall time covers loading, merging and writing the merged file; peak RSS is the child's ``VmHWM``,
which includes the interpreter and torch (the "idle" line: a child that only imports them).
Values are random (base ~ N(0, 0.02^2), task vectors ~ N(0, 0.001^2)); shapes are real.

Usage: ``python -m atmflow.studies.merge_benchmark [--tasks 8] [--model vit-b-16] [--methods ta ties ...]
[--small] [--threads N] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from atmflow.merging.checkpoint_files import SafetensorsFile
from atmflow.merging.registry import METHODS, method_names
from atmflow.merging.rule import Rule
from atmflow.merging.rules.dare import drop_and_rescale, mask_generator

# width, layers, patch, output dimension of the projection (open_clip ViT-B-16 and ViT-L-14 visual towers)
MODELS = {"vit-b-16": (768, 12, 16, 512), "vit-l-14": (1024, 24, 14, 768)}
IMAGE = 224


def visual_tower_shapes(model: str, layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of an open_clip ViT visual tower (``layers`` overrides the depth)."""
    width, depth, patch, out = MODELS[model]
    tokens = (IMAGE // patch) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (tokens, width),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
    }
    for i in range(depth if layers is None else layers):
        block = f"visual.transformer.resblocks.{i}"
        shapes |= {
            f"{block}.ln_1.weight": (width,), f"{block}.ln_1.bias": (width,),
            f"{block}.attn.in_proj_weight": (3 * width, width), f"{block}.attn.in_proj_bias": (3 * width,),
            f"{block}.attn.out_proj.weight": (width, width), f"{block}.attn.out_proj.bias": (width,),
            f"{block}.ln_2.weight": (width,), f"{block}.ln_2.bias": (width,),
            f"{block}.mlp.c_fc.weight": (4 * width, width), f"{block}.mlp.c_fc.bias": (4 * width,),
            f"{block}.mlp.c_proj.weight": (width, 4 * width), f"{block}.mlp.c_proj.bias": (width,),
        }
    return shapes | {"visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,), "visual.proj": (width, out)}


def write_checkpoints(folder: Path, shapes: dict[str, tuple[int, ...]], tasks: int) -> tuple[Path, list[Path]]:
    """``base.safetensors`` and ``task{t}.safetensors``: random values, real shapes."""
    g = torch.Generator().manual_seed(0)
    base = {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}
    save_file(base, folder / "base.safetensors")
    paths = []
    for t in range(tasks):
        paths.append(folder / f"task{t}.safetensors")
        save_file({k: v + 0.001 * torch.randn(v.shape, generator=g) for k, v in base.items()}, paths[-1])
    return folder / "base.safetensors", paths


# --- the flattened reference ------------------------------------------------------------------------------


def reference_merge(method: str, base_path: Path, paths: Sequence[Path], out: Path) -> None:
    """Merge as the official TIES code lays data out: every task vector a row of one ``n x d`` matrix."""
    rule: Rule = METHODS[method]()
    base = load_file(base_path)
    names = [k for k, v in base.items() if v.is_floating_point()]
    flat_base = torch.cat([base[k].reshape(-1) for k in names])
    taus = torch.empty(len(paths), flat_base.numel())
    for row, path in zip(taus, paths, strict=True):
        row.copy_(torch.cat([load_file(path)[k].reshape(-1) for k in names]))
    taus -= flat_base
    flat = flat_base + reference_update(rule, taus, [base[k].numel() for k in names], names)
    merged, start = dict(base), 0
    for k in names:
        merged[k] = flat[start:start + base[k].numel()].reshape(base[k].shape).clone()
        start += base[k].numel()
    save_file(merged, out)


def reference_update(rule: Any, taus: torch.Tensor, sizes: list[int], names: list[str]) -> torch.Tensor:
    """The flattened update of ``rule`` (a method of :data:`REFERENCES`) for the ``n x d`` task vectors."""
    n, d = taus.shape
    if rule.name == "ta":
        return rule.lam * taus.sum(0)
    if rule.name == "mean":
        return rule.alpha / n * taus.sum(0)
    if rule.name in ("dare", "breadcrumbs"):
        masked = torch.empty_like(taus)
        for t in range(n):
            for out, seg, name in zip(masked[t].split(sizes), taus[t].split(sizes), names, strict=True):
                out.copy_(drop_and_rescale(seg, rule.p, mask_generator(rule.seed, t, name)) if rule.name == "dare"
                          else seg * _between(seg, rule.beta, rule.gamma))
        return rule.lam * masked.sum(0)
    if rule.name == "tatr":
        return rule.lam * taus.sum(0) * _trust_mask(taus, rule.trust_fraction)
    if rule.name == "ties+tatr":
        return rule.lam * _ties(taus, rule.k) * _trust_mask(taus, rule.trust_fraction)
    return rule.lam * _ties(taus, rule.k)


# The methods with a flattened reference implementation here; any other registered method is measured
# without one (its agreement columns read "no reference").
REFERENCES = ("ta", "mean", "dare", "breadcrumbs", "tatr", "ties+tatr", "ties")


def _between(x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    low, high = np.quantile(x.abs().numpy(), [beta, gamma])
    return (x.abs() >= float(low)) & (x.abs() <= float(high))


def _ties(taus: torch.Tensor, k: float) -> torch.Tensor:
    """The official ``topk_values_mask``, ``resolve_sign`` and ``disjoint_merge`` ("dis-mean"), with the
    threshold at the m-th largest value (the official code takes the (m+1)-th)."""
    d = taus.shape[1]
    kth = taus.abs().kthvalue(d - int(d * k) + 1, dim=1, keepdim=True).values
    trimmed = taus * (taus.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    return (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)


def _trust_mask(taus: torch.Tensor, fraction: float) -> torch.Tensor:
    """FusionBench's zero-shot trust region: Omega by the double loop over task pairs, then a full sort."""
    grads = taus.abs()
    omega = torch.zeros(taus.shape[1])
    for i in range(len(taus)):
        for j in range(len(taus)):
            if i != j:
                omega += grads[j] * taus[i].abs()
    m = int(fraction * omega.numel())
    epsilon = omega.sort(descending=True).values[m - 1] if m else math.inf
    return (omega < epsilon) | (omega == 0)


# --- measurements ----------------------------------------------------------------------------------------


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1024


def child(kind: str, method: str, folder: Path, tasks: int) -> dict[str, float]:
    from atmflow.merging.checkpoints import merge_checkpoints

    base, paths = folder / "base.safetensors", [folder / f"task{t}.safetensors" for t in range(tasks)]
    out = folder / f"{kind}-{method}.safetensors"
    start = time.perf_counter()
    if kind == "ours":
        merge_checkpoints(method, base, paths, out)
    elif kind == "reference":
        reference_merge(method, base, paths, out)
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def measure(kind: str, method: str, folder: Path, tasks: int, threads: int | None) -> dict[str, float] | None:
    """One measurement in a fresh process; ``None`` (reported on stderr) if that process fails."""
    cmd = [sys.executable, "-m", "atmflow.studies.merge_benchmark", "--child", kind, "--methods", method,
           "--dir", str(folder), "--tasks", str(tasks)] + ([] if threads is None else ["--threads", str(threads)])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{kind} {method} failed with exit code {proc.returncode} (-9: killed, e.g. out of memory)\n"
              f"{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def differences(a: Path, b: Path, tolerance: float = 1e-6) -> tuple[float, int]:
    """The largest absolute difference between two merged models, and how many entries differ by more."""
    x, y = SafetensorsFile(a), SafetensorsFile(b)
    largest, count = 0.0, 0
    for k in x:
        d = (x[k].double() - y[k].double()).abs()
        largest, count = max(largest, d.max().item()), count + int((d > tolerance).sum())
    return largest, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b-16")
    parser.add_argument("--methods", nargs="+", default=method_names(), choices=method_names())
    parser.add_argument("--small", action="store_true", help="4 residual blocks instead of the model's depth")
    parser.add_argument("--threads", type=int, help="torch threads in each measurement (default: torch's)")
    parser.add_argument("--dir", help="folder for the checkpoints (default: a temporary folder)")
    parser.add_argument("--child", choices=["ours", "reference", "idle"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.methods[0], Path(args.dir), args.tasks)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, folder: Path) -> None:
    shapes = visual_tower_shapes(args.model, 4 if args.small else None)
    d = sum(math.prod(s) for s in shapes.values())
    write_checkpoints(folder, shapes, args.tasks)
    idle_run = measure("idle", args.methods[0], folder, args.tasks, args.threads)
    assert idle_run is not None
    idle = idle_run["peak_rss_mb"]
    copy_mb = 4 * d / 2**20
    print(f"{args.model}{' (4 blocks)' if args.small else ''}: {len(shapes)} tensors, {d:,} parameters "
          f"(float32: {copy_mb:.0f} MB per model copy), {args.tasks} tasks; idle process {idle:.0f} MB; "
          f"torch threads {args.threads or torch.get_num_threads()}, {os.cpu_count()} CPUs ({cpu_name()})")
    print()
    print("| method | ours wall s | ours peak RSS MB | reference wall s | reference peak RSS MB "
          "| ours above idle, model copies | max abs difference | entries differing by > 1e-6 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods:
        ours = measure("ours", method, folder, args.tasks, args.threads)
        ref = measure("reference", method, folder, args.tasks, args.threads) if method in REFERENCES else None
        cells = [f"{r['wall_s']:.1f} | {r['peak_rss_mb']:.0f}" if r else "failed | failed" for r in (ours, ref)]
        if method not in REFERENCES:
            cells[1] = "no reference | -"
        copies = f"{(ours['peak_rss_mb'] - idle) / copy_mb:.1f}" if ours else "-"
        agreement = "- | -"
        if ours and ref:
            diff, count = differences(folder / f"ours-{method}.safetensors", folder / f"reference-{method}.safetensors")
            agreement = f"{diff:.1e} | {count:,}"
        print(f"| {method} | {cells[0]} | {cells[1]} | {copies} | {agreement} |", flush=True)
        for kind in ("ours", "reference"):
            (folder / f"{kind}-{method}.safetensors").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
