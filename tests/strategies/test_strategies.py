"""Every strategy and merge combination end to end (in-process grid), failures, NaN replies, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType
from safetensors.torch import load_file
from testkit import references
from testkit.merge_spy import MergeCall

from atmflow import protocol
from atmflow.client.app import app as client_app
from atmflow.config import load_config
from atmflow.merging.registry import METHODS, method_names
from atmflow.models.mobilenet import pretrained_encoder
from atmflow.rounds.exchange import TaskFailureError
from atmflow.server.experiment import run_experiment
from atmflow.server.results import RunResults
from atmflow.sim.inprocess import InProcessGrid
from atmflow.sim.local import run_inprocess

TASKS = ["animal-mnist", "digits", "fashion-mnist", "mnist"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One client cache for the module: one-shot runs fine-tune once and merge many ways."""
    return str(tmp_path_factory.mktemp("client-cache"))


def _load(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final_encoder.safetensors"))


@pytest.mark.parametrize("merge", method_names())
def test_oneshot_with_every_operator(tiny: dict[str, Any], shared_cache: str, merge: str) -> None:
    run_inprocess({**tiny, "run-name": "oneshot", "strategy": "oneshot", "merge": merge, "budget-epochs": 1,
                   "lambda-grid": "0.3,1.0", "tatr-exemplars": 16, "cache-dir": shared_cache})
    out = _load(Path(tiny["output-dir"]) / "oneshot")
    (record,) = out["rounds"]
    assert out["label"] == METHODS[merge].display_name()
    assert record["extra"]["merge"] == merge and set(record["extra"]["lambda_curve"]) == {"0.3", "1"}
    assert sorted(record["tasks"]) == TASKS and out["individual"] is not None
    geometry = record["geometry"]
    assert sorted(geometry["norms"]) == TASKS and all(n > 0 for n in geometry["norms"].values())
    assert all(geometry["cosine"][t][t] == pytest.approx(1.0) for t in TASKS)
    assert 0 <= geometry["mean_abs_cosine"] <= 1
    gradient_bytes = 2 if "tatr" in merge else 1  # TATR's gradient estimate rides on the train reply
    assert record["bytes_up"] > gradient_bytes * 4 * 2_200_000 * 4 * 0.99
    pretrained = pretrained_encoder().state_dict()
    final = _final(Path(tiny["output-dir"]) / "oneshot")
    assert any(not torch.equal(final[k], pretrained[k]) for k in pretrained)  # never the pretrained model


# Every rule's run-config key at a value other than its default, and merge-lambda (every scale).
ATM_PARAMS = {"merge-lambda": 0.7, "ties-k": 0.3, "breadcrumbs-beta": 0.5, "breadcrumbs-gamma": 0.99, "dare-p": 0.5,
              "merge-seed": 3, "tatr-trust-fraction": 0.05, "tatr-exemplars": 16}


def atm_reference(merge: str, call: MergeCall) -> dict[str, torch.Tensor]:
    """The model the operator's formula gives from ``call``'s base and task vectors, at ``ATM_PARAMS``."""
    taus, grads, lam = call.task_vectors(), call.task_grads(), ATM_PARAMS["merge-lambda"]
    update = {
        "mean": lambda: references.mean_reference(taus, alpha=lam),
        "ta": lambda: references.ta_reference(taus, lam),
        "ties": lambda: references.ties_reference(taus, k=0.3, lam=lam),
        "breadcrumbs": lambda: references.breadcrumbs_reference(taus, beta=0.5, gamma=0.99, lam=lam),
        "dare": lambda: references.dare_reference(taus, p=0.5, lam=lam, seed=3 + call.round - 1),  # a seed a round
        "tatr": lambda: references.tatr_reference(taus, 0.05, lam, grads=grads),
        "ties+tatr": lambda: references.ties_tatr_reference(taus, k=0.3, fraction=0.05, lam=lam, grads=grads),
    }[merge]()
    return references.merged(call.base, update)


def assert_model_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], keys: Any,
                       boundary: dict[str, torch.Tensor] | None = None) -> None:
    """``got == expected`` on ``keys`` (float rounding aside), except where ``boundary`` is True."""
    for k in keys:
        a, b = got[k], expected[k]
        if boundary is not None and k in boundary:
            a, b = a[~boundary[k]], b[~boundary[k]]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def trust_boundary(merge: str, call: MergeCall) -> dict[str, torch.Tensor] | None:
    """TATR: the entries whose Omega lies within float rounding of epsilon (the rule sums Omega in another
    order than the reference, so these may fall on either side); None for the other rules."""
    if "tatr" not in merge:
        return None
    omega = references.sensitivity_reference(call.task_vectors(), call.task_grads())
    eps = references.trust_epsilon(omega, ATM_PARAMS["tatr-trust-fraction"])
    near = (omega - eps).abs() <= 1e-5 * eps
    assert int(near.sum()) <= 16, f"{int(near.sum())} entries at the trust-region boundary"
    return references.unflat(near, call.task_vectors()[0])


@pytest.mark.parametrize("merge", method_names())
def test_atm_with_every_merge_step(tiny: dict[str, Any], merge: str, merge_calls: list[MergeCall]) -> None:
    """Two real ATM rounds in-process; the spy captures each round's base and task vectors, and the model
    the strategy carried into round 2 and wrote at the end must be the operator's formula applied to them
    (computed independently, tests/testkit/references.py), and never the base."""
    run_inprocess({**tiny, "run-name": "atm", "strategy": "atm", "merge": merge, "rounds": 2, "individual": False,
                   **ATM_PARAMS})
    out = _load(Path(tiny["output-dir"]) / "atm")
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    assert all(r["extra"]["merge"] == merge for r in out["rounds"])
    assert all(0 <= r["avg_accuracy"] <= 1 for r in out["rounds"])

    assert [(c.method, c.round) for c in merge_calls] == [(merge, 1), (merge, 2)]
    first, second = merge_calls
    pretrained = pretrained_encoder().state_dict()
    assert first.base.keys() == pretrained.keys()
    assert all(torch.equal(first.base[k], pretrained[k]) for k in pretrained)  # PA-ATM starts pretrained
    assert sorted(first.vectors) == TASKS and sorted(second.vectors) == TASKS
    assert (first.grads is not None) == METHODS[merge].uses_grads
    if first.grads is not None:
        assert sorted(first.grads) == TASKS
    tuned = list(first.task_vectors()[0])
    for call, produced in ((first, second.base), (second, _final(Path(tiny["output-dir"]) / "atm"))):
        expected = atm_reference(merge, call)
        assert_model_close(produced, expected, pretrained, trust_boundary(merge, call))
        assert any(not torch.equal(produced[k], call.base[k]) for k in tuned)  # the merge moved the model
        assert all(torch.equal(produced[k], call.base[k]) for k in pretrained if k not in tuned)  # frozen: kept


def test_ph_atm_starts_from_ta_and_tunes_on_validation(tiny: dict[str, Any], shared_cache: str) -> None:
    run_inprocess({**tiny, "run-name": "ph", "strategy": "ph-atm", "rounds": 2, "budget-epochs": 1,
                   "lambda-grid": "0.3,1.0", "cache-dir": shared_cache})
    out = _load(Path(tiny["output-dir"]) / "ph")
    assert out["label"] == "PH-ATM2" and out["init"]["extra"]["merge"] == "ta" and out["init"]["round"] == 0
    assert "lambda" in out["init"]["extra"] and out["individual"] is not None
    for record in out["rounds"]:  # validation split: 10% of train-size 100
        assert all(m["num-examples"] == 10 for m in record["train"].values())


def test_valft_atm_starts_pretrained_and_tunes_on_validation(tiny: dict[str, Any]) -> None:
    """Paper 000's valFT ATM: ATM from the pretrained model, each round fine-tuning on the validation splits."""
    run_inprocess({**tiny, "run-name": "valft", "strategy": "valft-atm", "rounds": 1, "individual": False,
                   "tasks": "digits,mnist"})
    out = _load(Path(tiny["output-dir"]) / "valft")
    assert out["label"] == "valFT-ATM1" and out["init"] is None
    assert all(m["num-examples"] == 10 for m in out["rounds"][0]["train"].values())  # 10% of train-size 100


def test_ph_atm_from_a_merged_checkpoint_file(tiny: dict[str, Any], shared_cache: str) -> None:
    run_inprocess({**tiny, "run-name": "ta-start", "strategy": "ta", "budget-epochs": 1, "lambda-grid": "",
                   "individual": False, "cache-dir": shared_cache})
    start = Path(tiny["output-dir"]) / "ta-start" / "final_encoder.safetensors"
    run_inprocess({**tiny, "run-name": "ph-file", "strategy": "atm", "init-checkpoint": str(start), "rounds": 1,
                   "individual": False})
    out = _load(Path(tiny["output-dir"]) / "ph-file")
    ta = _load(Path(tiny["output-dir"]) / "ta-start")
    assert out["init"]["extra"] == {"merge": "checkpoint", "path": str(start)}
    assert out["init"]["tasks"] == ta["rounds"][0]["tasks"]  # the same model, tested again


class Faulty:
    """The real ClientApp, except that the node holding ``task`` misbehaves on its train message number
    ``at`` (1-based): ``mode="raise"`` raises, ``mode="nan"`` replies with a NaN in its task vector."""

    def __init__(self, task: str, at: int, mode: str) -> None:
        self.partition, self.at, self.mode, self.count = sorted(TASKS).index(task), at, mode, 0

    def __call__(self, message: Message, context: Context) -> Message:
        mine = context.node_config["partition-id"] == self.partition
        if not (mine and message.metadata.message_type == MessageType.TRAIN):
            return client_app(message, context)
        self.count += 1
        if self.count != self.at:
            return client_app(message, context)
        if self.mode == "raise":
            raise RuntimeError("node lost its disk")
        reply = client_app(message, context)
        tau = reply.content.array_records[protocol.ARRAYS].to_torch_state_dict()
        first = next(iter(tau))
        tau[first] = tau[first].clone().index_fill_(0, torch.tensor([0]), float("nan"))
        reply.content.array_records[protocol.ARRAYS] = ArrayRecord(tau)
        return reply


def _run(app: Any, overrides: dict[str, Any]) -> RunResults:
    cfg = load_config({**overrides, "tasks": ",".join(sorted(TASKS))})
    return run_experiment(InProcessGrid(app, cfg.to_run_config(), len(cfg.tasks)), cfg)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_failure_policy_fail_names_the_task_and_keeps_the_last_checkpoint(tiny: dict[str, Any], mode: str) -> None:
    overrides = {**tiny, "run-name": "fail", "rounds": 3, "individual": False}
    with pytest.raises(TaskFailureError) as err:
        _run(Faulty("digits", at=2, mode=mode), overrides)
    assert set(err.value.problems) == {"digits"} and "round 2 train" in str(err.value)
    reason = "node lost its disk" if mode == "raise" else "non-finite values"
    assert reason in err.value.problems["digits"]
    state = json.loads((Path(tiny["output-dir"]) / "fail" / "checkpoint.json").read_text())
    assert state["round"] == 1 and (Path(tiny["output-dir"]) / "fail" / state["weights"]).is_file()


def test_failure_policy_skip_merges_the_others_and_records_it(tiny: dict[str, Any]) -> None:
    res = _run(Faulty("digits", at=2, mode="nan"), {**tiny, "run-name": "skip", "rounds": 3, "individual": False,
                                                     "on-missing-task": "skip"})
    assert [sorted(r.missing) for r in res.rounds] == [[], ["digits"], []]
    assert "non-finite" in res.rounds[1].missing["digits"]
    assert sorted(res.rounds[1].train) == sorted(set(TASKS) - {"digits"})
    assert "Tasks skipped in some round" in (Path(tiny["output-dir"]) / "skip" / "report.md").read_text()


@pytest.mark.heavy
def test_resume_after_a_crash_gives_the_uninterrupted_result(tiny: dict[str, Any]) -> None:
    overrides = {**tiny, "rounds": 3, "individual": False}
    _run(client_app, {**overrides, "run-name": "straight"})
    with pytest.raises(TaskFailureError):  # the run dies in round 3, after round 2's checkpoint
        _run(Faulty("mnist", at=3, mode="raise"), {**overrides, "run-name": "resumed"})
    resumed = _run(client_app, {**overrides, "run-name": "resumed", "resume": True})
    assert [r.round for r in resumed.rounds] == [1, 2, 3]
    straight, again = (_final(Path(tiny["output-dir"]) / n) for n in ("straight", "resumed"))
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_resume_refuses_a_changed_config(tiny: dict[str, Any]) -> None:
    overrides = {**tiny, "run-name": "changed", "rounds": 1, "individual": False}
    _run(client_app, overrides)
    with pytest.raises(ValueError, match=r"run config changed \(lr: 0.0001 -> 0.001\)"):
        _run(client_app, {**overrides, "resume": True, "lr": 1e-3})


def test_client_cache_reuses_fine_tuning_only_when_nothing_changed(tiny: dict[str, Any], tmp_path: Path) -> None:
    common = {**tiny, "strategy": "ta", "budget-epochs": 1, "lambda-grid": "", "individual": False,
              "cache-dir": str(tmp_path / "cache")}
    first = run_inprocess({**common, "run-name": "c1"})
    again = run_inprocess({**common, "run-name": "c2", "merge": "ties"})  # other merge, same fine-tuning
    changed = run_inprocess({**common, "run-name": "c3", "lr": 2e-4})
    hits = [[m["cache-hit"] for m in r.rounds[0].train.values()] for r in (first, again, changed)]
    assert hits == [[0.0] * 4, [1.0] * 4, [0.0] * 4]
    assert first.rounds[0].train["mnist"]["train-loss"] == again.rounds[0].train["mnist"]["train-loss"]
