"""A new merge operator is one module: a ``Rule`` subclass with a ``name`` and declared parameters.

Defining ``ToySign`` (the fixture ``toy``) is all it takes: the run config accepts ``merge = "toy-sign"``
and validates its key ``toy-sign-gain``, ATM merges with it end to end, and ``atmflow merge`` offers it
with a ``--gain`` option. (``flwr run`` would also need the key in pyproject's ``[tool.flwr.app.config]``.)

The toy's formula: ``theta = theta_0 + lambda * gain * sgn(sum_t tau_t) * mean_t |tau_t|``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit.merge_spy import MergeCall

from atmflow.cli import main
from atmflow.config import ConfigError, load_config
from atmflow.merging.registry import METHODS
from atmflow.merging.rule import RULES, Rule, TaskTensors, param, scale, total

State = dict[str, torch.Tensor]


def toy_formula(base: State, taus: list[State], gain: float, lam: float) -> State:
    """The toy's formula, computed independently of its rule."""
    out = dict(base)
    for k in taus[0]:
        stacked = torch.stack([tau[k] for tau in taus])
        out[k] = base[k] + lam * gain * stacked.sum(0).sign() * stacked.abs().mean(0)
    return out


@pytest.fixture
def toy() -> Iterator[type[Rule]]:
    """Define (and so register) the toy rule for one test; take it out of the registry afterwards."""
    assert "toy-sign" not in RULES

    @dataclass
    class ToySign(Rule):
        """Toy sign merge: ``theta = theta_0 + lambda * gain * sgn(sum_t tau_t) * mean_t |tau_t|``."""

        name = "toy-sign"
        rank = 999
        gain: float = param(0.5, "gain of the elected-sign mean magnitude", lambda v: 0.0 < v <= 1.0,
                            "0 < gain <= 1", key="toy-sign-gain")
        lam: float = scale(1.0, "scaling lambda")

        def update(self, t: TaskTensors) -> torch.Tensor:
            direction = torch.sign(total(t.taus))
            return self.lam * self.gain * direction * total(tau.abs() for tau in t.taus) / len(t.taus)

    try:
        yield ToySign
    finally:
        RULES.pop("toy-sign", None)
    assert "toy-sign" not in METHODS


def test_a_new_operator_is_one_module_in_the_run_config(toy: type[Rule]) -> None:
    assert METHODS["toy-sign"] is toy
    cfg = load_config({"merge": "toy-sign", "toy-sign-gain": 0.25})
    assert cfg.merge_method == "toy-sign" and cfg.merge_params["toy-sign-gain"] == 0.25
    assert cfg.operator_params() == {"gain": 0.25}  # lambda: the rule's default unless merge-lambda is set
    assert load_config({"merge": "toy-sign", "merge-lambda": 0.4}).operator_params() == {"gain": 0.5, "lam": 0.4}
    assert load_config({}).to_run_config()["toy-sign-gain"] == 0.5  # every rule's key, with its default
    for bad in (2.0, 0.0, "loud"):
        with pytest.raises(ConfigError, match=r"toy-sign-gain: .* is not allowed \(0 < gain <= 1"):
            load_config({"merge": "toy-sign", "toy-sign-gain": bad})
    with pytest.raises(ConfigError, match="unknown merge method 'toy-sing' \\(did you mean 'toy-sign'"):
        load_config({"merge": "toy-sing"})


@pytest.mark.heavy
def test_a_new_operator_is_one_module_in_atm(toy: type[Rule], tiny: dict[str, Any],
                                            merge_calls: list[MergeCall]) -> None:
    """Two ATM rounds in-process with the toy: the model the strategy carries into round 2 and writes
    at the end is the toy's formula applied to that round's base and task vectors."""
    from atmflow.sim.local import run_inprocess

    result = run_inprocess({**tiny, "run-name": "toy", "strategy": "atm", "merge": "toy-sign", "rounds": 2,
                            "individual": False, "toy-sign-gain": 0.25, "merge-lambda": 0.8})
    assert [r.extra["merge"] for r in result.rounds] == ["toy-sign", "toy-sign"]
    assert [(c.method, c.params, c.round) for c in merge_calls] == [
        ("toy-sign", {"gain": 0.25, "lam": 0.8}, 1), ("toy-sign", {"gain": 0.25, "lam": 0.8}, 2)]
    first, second = merge_calls
    final = load_file(str(Path(tiny["output-dir"]) / "toy" / "final_encoder.safetensors"))
    for call, produced in ((first, second.base), (second, final)):
        expected = toy_formula(call.base, call.task_vectors(), gain=0.25, lam=0.8)
        assert produced.keys() >= expected.keys()
        for k in expected:
            torch.testing.assert_close(produced[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
        assert any(not torch.equal(produced[k], call.base[k]) for k in call.vectors[sorted(call.vectors)[0]])


def test_a_new_operator_is_one_module_in_the_merge_cli(toy: type[Rule], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    g = torch.Generator().manual_seed(0)
    base = {"enc.w": torch.randn(6, 4, generator=g), "enc.b": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(10)}
    tuned = [{k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
             for _ in range(3)]
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, state in enumerate(tuned):
        save_file(state, tmp_path / f"task{i}.safetensors")
        paths.append(str(tmp_path / f"task{i}.safetensors"))

    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    printed = capsys.readouterr().out
    assert "  toy-sign " in printed and "--gain" in printed

    out = tmp_path / "merged.safetensors"
    argv = ["merge", "--method", "toy-sign", "--base", str(tmp_path / "base.safetensors"), "--finetuned", *paths,
            "--out", str(out), "--gain", "0.25", "--lam", "0.5"]
    assert main(argv) == 0
    assert "with toy-sign (gain=0.25, lam=0.5)" in capsys.readouterr().out
    taus = [{k: sd[k] - base[k] for k in ("enc.w", "enc.b")} for sd in tuned]
    expected = toy_formula(base, taus, gain=0.25, lam=0.5)
    merged = load_file(str(out))
    assert merged.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], rtol=1e-6, atol=1e-6, msg=k)

    assert main([*argv[:-4], "--gain", "1.5"]) == 2  # the rule's check, named
    assert "gain=1.5 is not allowed (0 < gain <= 1)" in capsys.readouterr().err
