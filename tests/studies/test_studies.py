"""The study runner: the knowledge-conflict formula, run hashes, options, and every study end to end on
a tiny subset (outputs, figures, and a second invocation that computes nothing)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from atmflow.analyses.conflict import knowledge_conflict, total_conflict
from atmflow.config import ConfigError
from atmflow.merging import merge
from atmflow.studies import STUDIES, run_study
from atmflow.studies.__main__ import main
from atmflow.studies.runner import Pick, RunSpec
from atmflow.studies.tables import compare


def test_knowledge_conflict_is_definition_1_and_eq_4_for_a_linear_loss() -> None:
    """Paper 003: C_{j|i} = L_j(merge of all) - L_j(merge without i); for TA and a linear loss
    L_j(theta) = <g_j, theta> it is exactly lambda * <g_j, Delta_i> (Eq. 3-4)."""
    gen = torch.Generator().manual_seed(0)
    tasks, lam = ["a", "b", "c"], 0.3
    base = {"w": torch.randn(5, 4, generator=gen, dtype=torch.float64)}
    deltas = {t: {"w": torch.randn(5, 4, generator=gen, dtype=torch.float64)} for t in tasks}
    grads = {t: torch.randn(5, 4, generator=gen, dtype=torch.float64) for t in tasks}

    def losses(keep: list[str]) -> dict[str, float]:
        model = merge("ta", base, [deltas[t] for t in keep], lam=lam)
        return {j: float((grads[j] * model["w"]).sum()) for j in tasks}

    conflict = knowledge_conflict(losses(tasks), {i: losses([t for t in tasks if t != i]) for i in tasks})
    assert set(conflict) == set(tasks) and all(j not in conflict[j] for j in tasks)
    for j in tasks:
        for i in conflict[j]:
            assert conflict[j][i] == pytest.approx(lam * float((grads[j] * deltas[i]["w"]).sum()))
    assert total_conflict(conflict) == pytest.approx(sum(v for row in conflict.values() for v in row.values()))
    assert knowledge_conflict({"a": 1.0, "b": 2.0}, {"a": {"a": 9.0, "b": 1.5}, "b": {"a": 0.4, "b": 9.0}}) == {
        "a": {"b": pytest.approx(0.6)}, "b": {"a": pytest.approx(0.5)}}


def test_run_key_ignores_where_a_run_writes_but_not_what_it_computes() -> None:
    pick = (Pick("TA", "s", 1),)
    a = RunSpec(0, {"strategy": "oneshot", "output-dir": "x", "cache-dir": "c", "num-threads": 1}, pick)
    assert a.key() == RunSpec(0, {"strategy": "oneshot", "output-dir": "y", "num-threads": 2}, pick).key()
    assert a.key() != RunSpec(1, {"strategy": "oneshot"}, pick).key()
    assert a.key() != RunSpec(0, {"strategy": "oneshot", "train-size": 100}, pick).key()
    assert a.key() != RunSpec(0, {"strategy": "oneshot"}, pick, kind="conflict").key()


def test_bad_study_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="(?s)its keys: budgets, methods.*budgetz"):
        run_study(STUDIES["budget"], seeds=[0], root=tmp_path, options={"budgetz": "2"})
    with pytest.raises(ConfigError, match="same budget"):
        run_study(STUDIES["budget-distribution"], seeds=[0], root=tmp_path, options={"distributions": "1x10,2x4"})
    with pytest.raises(ConfigError, match="unknown one-shot method"):
        run_study(STUDIES["original-settings"], seeds=[0], root=tmp_path, options={"methods": "TA,ZIP"})
    # the talos study's analyses name tasks of the run: checked before any work starts
    two_tasks = {"tasks": "mnist,digits"}
    with pytest.raises(ConfigError, match=r"negation-control: \['animal-mnist'\] is not among the run's tasks"):
        run_study(STUDIES["talos"], seeds=[0], root=tmp_path, run_config=two_tasks,
                  options={"disentanglement-tasks": "mnist,digits"})
    with pytest.raises(ConfigError, match="disentanglement-tasks.*two different tasks"):
        run_study(STUDIES["talos"], seeds=[0], root=tmp_path, options={"disentanglement-tasks": "mnist"})
    with pytest.raises(ConfigError, match="disentanglement-grid"):
        run_study(STUDIES["talos"], seeds=[0], root=tmp_path, options={"disentanglement-grid": 1})


def test_an_unparseable_option_string_names_the_options_flag(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["talos", "--root", str(tmp_path), "--options", "modes=talos"]) == 2  # a string needs quotes
    assert "cannot parse --options 'modes=talos'" in capsys.readouterr().err


def test_compare_reports_differences_within_the_spread() -> None:
    assert "within the seed spread" in compare("A", [0.80, 0.90, 0.85], "B", [0.84, 0.86, 0.83])
    assert "larger than the seed spread" in compare("A", [0.90, 0.91, 0.92], "B", [0.80, 0.81, 0.79])
    assert "one seed" in compare("A", [0.9], "B", [0.8])


# A tiny subset: 2 tasks, 60 training images, budgets of 1-2 epochs, 2 lambdas; the studies share one
# root, so runs with the same config (TA at 2 epochs, PA-ATM 2 x 1) are computed once.
RUN_CONFIG = ("train-size=60 test-size=20 image-size=32 tasks='mnist,digits' lambda-grid='0.5,1.0' "
              "tatr-exemplars=16 node-wait-s=5.0")
OPTIONS = {
    "budget-distribution": "distributions='1x2,2x1'",
    "budget": "budgets='1,2' methods='TA,TATR'",
    "original-settings": "budget=2 long-rounds=3 methods='TA,TATR'",
    "orthogonality": "rounds=2 budget=2",
    "conflict": "budget=2",
    "talos": "budget=2 negation-control='digits' disentanglement-tasks='mnist,digits' disentanglement-grid=3 "
             "disentanglement-examples=8",
}
FIGURES = {
    "budget-distribution": {"accuracy_per_distribution.png", "accuracy_per_round.png", "radar.png"},
    "budget": {"accuracy_per_budget.png", "radar_K1.png", "radar_K2.png"},
    "original-settings": {"radar.png", "accuracy_per_round.png"},
    "orthogonality": {"cosine_per_iteration.png", "cosine_heatmaps.png"},
    "conflict": {"conflict_heatmaps.png"},
    "talos": {"disentanglement.png"},
}


def _csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.heavy
def test_every_study_end_to_end_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "studies"
    for name, options in OPTIONS.items():
        assert main([name, "--seeds", "0", "--root", str(root), "--run-config", RUN_CONFIG, "--options", options]) == 0
        out = root / name
        rows = _csv(out / "results.csv")
        assert rows and {r["study"] for r in rows} == {name}
        assert all((root / "runs" / r["run"] / "results.json").is_file() for r in rows)
        assert all((root / "runs" / r["run"] / "run.json").is_file() for r in rows)
        assert {p.name for p in (out / "figures").glob("*.png")} == FIGURES[name]
        assert "|---|" in (out / "report.md").read_text()

    bd = _csv(root / "budget-distribution" / "results.csv")
    assert {(r["setting"], r["method"]) for r in bd if r["task"] == "avg" and r["metric"] == "accuracy"} == {
        ("1x2", "PA-ATM"), ("2x1", "PA-ATM"), ("1x2", "pretrained"), ("1x2", "individual")}
    budget = _csv(root / "budget" / "results.csv")
    assert {r["setting"] for r in budget} == {"K=1", "K=2"}
    assert {r["task"] for r in budget} == {"mnist", "digits", "avg"}
    orig = (root / "original-settings" / "report.md").read_text()
    for row in ("| pretrained |", "| TA |", "| TATR |", "| PH-ATM2 |", "| PA-ATM2 |", "| PA-ATM3 |", "| individual |",
                "| individual (3 epochs) |"):
        assert row in orig
    orig_rows = _csv(root / "original-settings" / "results.csv")

    def value(method: str, task: str, metric: str) -> float:
        return next(float(r["value"]) for r in orig_rows
                    if (r["method"], r["task"], r["metric"]) == (method, task, metric))

    # each row's normalized accuracy divides by individual models of its own budget: PA-ATM3 by 3-epoch ones
    for method, bound in (("PA-ATM3", "individual (3 epochs)"), ("PA-ATM2", "individual"), ("TA", "individual")):
        expected = statistics.fmean(value(method, t, "accuracy") / value(bound, t, "accuracy")
                                    for t in ("mnist", "digits"))
        assert value(method, "avg", "normalized") == pytest.approx(expected, rel=1e-4)  # the csv keeps 6 digits
    # PA-ATM2 is round 2 of the 3-round run, which is the budget study's 2-round run (same seed, same rounds)
    pa2 = [r for r in _csv(root / "original-settings" / "results.csv") if r["method"] == "PA-ATM2"]
    pak2 = [r for r in budget if r["method"] == "PA-ATM" and r["setting"] == "K=2"]
    assert {(r["task"], r["metric"], r["value"]) for r in pa2 if r["metric"] == "accuracy"} == {
        (r["task"], r["metric"], r["value"]) for r in pak2 if r["metric"] == "accuracy"}
    conflict = _csv(root / "conflict" / "results.csv")
    pairs = {(r["method"], r["task"]) for r in conflict if r["metric"] == "conflict-loss"}
    assert pairs == {(m, p) for m in ("TA", "TATR") for p in ("mnist|digits", "digits|mnist", "total")}
    talos = _csv(root / "talos" / "results.csv")
    assert {(r["setting"], r["method"]) for r in talos if r["metric"] == "s-per-step"} == {
        (mode, method) for mode in ("full", "talos") for method in ("TA", "PA-ATM2")}
    assert {r["setting"] for r in talos if r["metric"] == "calibration-s"} == {"talos"}
    negated = {(r["setting"], r["task"]) for r in talos if r["method"] == "negation" and r["metric"] == "alpha"}
    assert negated == {("full", "mnist"), ("talos", "mnist")}  # every task but the control
    xi = [float(r["value"]) for r in talos if r["metric"] == "mean-xi"]
    assert len(xi) == 2 and all(0 <= v <= 2 for v in xi)
    talos_report = (root / "talos" / "report.md").read_text()
    assert "## Task negation" in talos_report and "## Weight-disentanglement error" in talos_report
    cos = _csv(root / "orthogonality" / "results.csv")
    assert {r["setting"] for r in cos if r["metric"] == "mean-abs-cosine"} == {"iteration 1", "iteration 2", "2 epochs"}

    # a second invocation finds every run's results and computes nothing
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached run was computed again")

    monkeypatch.setattr("atmflow.sim.local.run_inprocess", fail)
    monkeypatch.setitem(STUDIES["conflict"].probes, "conflict", fail)
    for kind in ("negation", "disentanglement"):
        monkeypatch.setitem(STUDIES["talos"].probes, kind, fail)
    for name, options in OPTIONS.items():
        before = (root / name / "results.csv").read_text()
        outcome = run_study(STUDIES[name], seeds=[0], root=root, run_config=_parse(RUN_CONFIG), options=_parse(options))
        assert outcome.computed == 0 and outcome.runs > 0
        assert (root / name / "results.csv").read_text() == before


def _parse(text: str) -> dict[str, Any]:
    from atmflow.app_config import parse_overrides

    return parse_overrides(text)


def test_a_run_folder_locked_by_a_live_process_is_not_claimed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from atmflow.studies.runner import _claim

    (tmp_path / "lock").write_text(str(os.getppid()))  # a live process
    assert not _claim(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock").write_text(dead.stdout.strip())  # its holder has exited: taken over
    assert _claim(tmp_path) and (tmp_path / "lock").read_text() == str(os.getpid())
