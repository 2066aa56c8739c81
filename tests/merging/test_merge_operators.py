"""Merge operators: hand-computed examples, properties over seeds, and full-sort references."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from testkit.references import official_breadcrumbs_rows, tatr_reference, ties_reference

from atmflow.merging import METHODS, merge
from atmflow.merging.select import top_fraction_thresholds

SEEDS = range(5)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def random_case(seed: int, n: int = 3, shapes: tuple[tuple[int, ...], ...] = ((6, 5), (7,), ()),
                quantized: bool = False) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base with an integer buffer and ``n`` task vectors over its float tensors (``quantized``: many ties)."""
    g = torch.Generator().manual_seed(seed)
    base = {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)} | {"count": torch.tensor(5)}

    def draw(s: tuple[int, ...]) -> torch.Tensor:
        x = torch.randn(s, generator=g)
        return (x * 2).round() / 4 if quantized else x
    return base, [{f"p{i}": draw(s) for i, s in enumerate(shapes)} for _ in range(n)]


def update(merged: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: merged[k] - base[k] for k in base if base[k].is_floating_point()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


# --- hand-computed examples -----------------------------------------------------------------------


def test_ta_and_mean_by_hand() -> None:
    base = {"w": t(1.0, 2.0, 3.0), "count": torch.tensor(7)}
    taus = [{"w": t(1.0, 0.0, -2.0)}, {"w": t(3.0, 4.0, 0.0)}]
    assert torch.allclose(merge("ta", base, taus, lam=0.25)["w"], t(2.0, 3.0, 2.5))
    assert torch.allclose(merge("mean", base, taus, alpha=0.5)["w"], t(2.0, 3.0, 2.5))
    assert torch.equal(merge("ta", base, taus)["w"], base["w"] + 0.3 * t(4.0, 4.0, -2.0))  # default lambda 0.3
    assert torch.equal(merge("mean", base, taus)["count"], torch.tensor(7))


def test_ties_trims_globally_per_task_elects_and_takes_the_disjoint_mean() -> None:
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    # task 1: |tau| = 4, 3 | 0.5, 2 -> top 2 of 4 over BOTH tensors keeps 4 and 3 (per tensor would keep 2)
    # task 2: |tau| = 3, 2 | 1, 1 -> keeps -3 and 2
    taus = [{"a": t(4.0, 3.0), "b": t(0.5, 2.0)}, {"a": t(-3.0, 2.0), "b": t(1.0, -1.0)}]
    merged = merge("ties", base, taus, k=0.5, lam=1.0)
    # elected a: sgn(4 - 3) = +, sgn(3 + 2) = +; b: nothing kept (mean over no task is 0)
    assert torch.equal(merged["a"], t(4.0, 2.5)) and torch.equal(merged["b"], t(0.0, 0.0))
    assert torch.equal(merge("ties", base, taus, k=0.5, lam=0.5)["a"], t(2.0, 1.25))


def test_ties_keeps_values_tied_with_the_threshold() -> None:
    base = {"w": torch.zeros(4)}
    merged = merge("ties", base, [{"w": t(1.0, -1.0, 1.0, 0.5)}], k=0.25)  # m = 1, but three values tie at 1
    assert torch.equal(merged["w"], t(1.0, -1.0, 1.0, 0.0))


@pytest.mark.parametrize(("sign", "expected"), [(1.0, 0.5), (-1.0, -0.5)])
def test_ties_zero_sum_takes_the_majority_sign(sign: float, expected: float) -> None:
    base = {"x": torch.zeros(1), "y": torch.zeros(2)}
    taus = [{"x": t(0.5), "y": t(sign, sign)}, {"x": t(-0.5), "y": t(sign, sign)}]
    # x sums to 0: its sign is the sign of the sum of all elected signs (two from y)
    assert torch.equal(merge("ties", base, taus, k=1.0)["x"], t(expected))


def test_breadcrumbs_keeps_entries_between_the_percentiles() -> None:
    base = {"w": torch.zeros(10)}
    tau = t(1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0, -10.0)
    # q_0.2 = 2.8 and q_0.8 = 8.2 of |tau| (linear interpolation): keeps |tau| in 3..8
    merged = merge("breadcrumbs", base, [{"w": tau}], beta=0.2, gamma=0.8, lam=1.0)
    assert torch.equal(merged["w"], t(0.0, 0.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 0.0, 0.0))


def test_breadcrumbs_per_tensor_option_uses_percentiles_of_each_tensor() -> None:
    base = {"small": torch.zeros(3), "large": torch.zeros(3)}
    taus = [{"small": t(1.0, 2.0, 3.0), "large": t(100.0, 200.0, 300.0)}]
    merged = merge("breadcrumbs", base, taus, beta=0.5, gamma=1.0, lam=1.0, per_row=0)
    assert torch.equal(merged["small"], t(0.0, 2.0, 3.0)) and torch.equal(merged["large"], t(0.0, 200.0, 300.0))


def test_breadcrumbs_masks_each_row_as_the_official_code() -> None:
    """Rows of different scales (as in real weights): per row, of 10 entries drop the largest
    floor(10 * 0.1) = 1 and keep the next floor(10 * 0.3) = 3; a tensor-wide percentile would keep
    only entries of the large row."""
    small = t(0.1, -0.9, 0.3, 0.7, -0.2, 0.5, 0.8, -0.4, 0.6, 1.0)
    tau = torch.stack([small, 100 * small.flip(0)])
    kept = t(0.0, -0.9, 0.0, 0.7, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0)  # 1.0 dropped; 0.9, 0.8, 0.7 kept
    expected = torch.stack([kept, 100 * kept.flip(0)])
    merged = merge("breadcrumbs", {"w": torch.zeros(2, 10)}, [{"w": tau}], beta=0.6, gamma=0.9, lam=1.0)
    assert torch.equal(merged["w"], expected)
    assert torch.equal(merged["w"], official_breadcrumbs_rows(tau, 1 - 0.9, 0.9 - 0.6))
    per_tensor = merge("breadcrumbs", {"w": torch.zeros(2, 10)}, [{"w": tau}], beta=0.6, gamma=0.9, lam=1.0,
                       per_row=0)["w"]
    assert per_tensor[0].count_nonzero() == 0 and not torch.equal(per_tensor, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_breadcrumbs_matches_the_official_rule_on_random_matrices(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tau = torch.randn(16, 1000, generator=g) * torch.logspace(-3, 1, 16).unsqueeze(1)  # rows of other scales
    merged = merge("breadcrumbs", {"w": torch.zeros(16, 1000)}, [{"w": tau}], lam=1.0)  # beta .85, gamma .993
    official = official_breadcrumbs_rows(tau, 1 - 0.993, 0.993 - 0.85)
    assert torch.equal(merged["w"], official)
    assert (official != 0).sum(dim=1).tolist() == [143] * 16  # 7 outliers dropped, 143 kept per row


def test_dare_drops_or_rescales_every_entry_reproducibly() -> None:
    base = {"w": torch.zeros(1000), "v": torch.zeros(3)}
    tau = {"w": torch.ones(1000), "v": torch.ones(3)}
    merged = merge("dare", base, [tau], p=0.75, lam=1.0, seed=3)
    assert set(merged["w"].unique().tolist()) == {0.0, 4.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert 0.2 < (merged["w"] > 0).float().mean() < 0.3
    assert torch.equal(merge("dare", base, [tau], p=0.75, lam=1.0, seed=3)["w"], merged["w"])
    assert not torch.equal(merge("dare", base, [tau], p=0.75, lam=1.0, seed=4)["w"], merged["w"])
    # a tensor's mask depends on (seed, task, name) only, not on the other tensors merged
    alone = merge("dare", {"w": base["w"]}, [{"w": tau["w"]}], p=0.75, lam=1.0, seed=3)
    assert torch.equal(alone["w"], merged["w"])


TAUS_TATR = [{"w": t(1.0, 2.0, 0.0, 1.0)}, {"w": t(3.0, 1.0, 1.0, 0.0)}]


@pytest.mark.parametrize(("fraction", "expected"), [(0.25, t(0.0, 3.0, 1.0, 1.0)), (0.5, t(0.0, 0.0, 1.0, 1.0))])
def test_tatr_zero_shot_by_hand(fraction: float, expected: torch.Tensor) -> None:
    # zero-shot: Omega = |tau_2| |tau_1| + |tau_1| |tau_2| = (6, 4, 0, 0); the top 1 (or 2) of 4 is excluded
    merged = merge("tatr", {"w": torch.zeros(4)}, TAUS_TATR, trust_fraction=fraction, lam=1.0)
    assert torch.equal(merged["w"], expected)


@pytest.mark.parametrize(("grads", "expected"), [
    ([t(0.0, 0.0, 0.0, 1.0), t(1.0, 0.0, 0.0, 0.0)], t(0.0, 3.0, 1.0, 1.0)),  # Omega = (1, 0, 0, 0)
    ([t(0.0, 1.0, 0.0, 0.0), t(0.0, 0.0, 0.0, 0.0)], t(4.0, 0.0, 1.0, 1.0)),  # Omega = (0, 1, 0, 0)
])
def test_gradient_tatr_uses_the_gradients(grads: list[torch.Tensor], expected: torch.Tensor) -> None:
    """Eq. 8 with exemplar gradients: different gradients exclude different dimensions."""
    base = {"w": torch.zeros(4)}
    merged = merge("tatr", base, TAUS_TATR, grads=[{"w": g} for g in grads], trust_fraction=0.25, lam=1.0)
    assert torch.equal(merged["w"], expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_gradient_tatr_is_not_the_pretrained_model(seed: int) -> None:
    """FusionBench's gradient TATR loses the per-task gradients (one dict key), its mask is empty and it
    returns the pretrained model. Ours excludes about ``trust_fraction`` of the dimensions, no more."""
    base, taus = random_case(seed, n=4, shapes=((50, 40),))
    g = torch.Generator().manual_seed(100 + seed)
    grads = [{"p0": torch.rand(50, 40, generator=g)} for _ in taus]
    merged = merge("tatr", base, taus, grads=grads, trust_fraction=0.05)
    ta = merge("ta", base, taus)
    assert not torch.equal(merged["p0"], base["p0"])
    assert (merged["p0"] == ta["p0"]).float().mean().item() == pytest.approx(0.95, abs=1e-3)


def test_tatr_with_a_single_task_excludes_nothing() -> None:
    base = {"w": torch.zeros(4)}
    assert torch.equal(merge("tatr", base, [{"w": t(1.0, 2.0, 3.0, 4.0)}], trust_fraction=0.5, lam=1.0)["w"],
                       t(1.0, 2.0, 3.0, 4.0))  # Omega = 0 everywhere: no conflict to exclude


def test_ties_tatr_masks_the_ties_result() -> None:
    base = {"w": torch.zeros(4)}
    ties = merge("ties", base, TAUS_TATR, k=1.0)["w"]  # disjoint mean: (2, 1.5, 1, 1)
    merged = merge("ties+tatr", base, TAUS_TATR, k=1.0, trust_fraction=0.25)["w"]
    assert torch.equal(ties, t(2.0, 1.5, 1.0, 1.0)) and torch.equal(merged, t(0.0, 1.5, 1.0, 1.0))


# --- properties over seeds -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ties_with_k_1_and_no_sign_conflict_is_the_mean(seed: int) -> None:
    base, taus = random_case(seed)
    signs = {k: torch.sign(v) for k, v in taus[0].items()}
    same_signs = [{k: v.abs() * signs[k] + 0.01 * signs[k] for k, v in tau.items()} for tau in taus]
    assert_same(merge("ties", base, same_signs, k=1.0, lam=0.7), merge("mean", base, same_signs, alpha=0.7))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantized", [False, True])
def test_ties_matches_the_flattened_full_sort_reference(seed: int, quantized: bool) -> None:
    base, taus = random_case(seed, n=4, quantized=quantized)
    for k in (0.1, 0.15, 0.5):
        merged = merge("ties", base, taus, k=k, lam=1.0)
        assert_same(update(merged, base), ties_reference(taus, k))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gradients", [False, True])
def test_tatr_matches_the_double_loop_full_sort_reference(seed: int, gradients: bool) -> None:
    base, taus = random_case(seed, n=4, quantized=True)
    g = torch.Generator().manual_seed(seed)
    grads = [{k: torch.rand(v.shape, generator=g) for k, v in tau.items()} for tau in taus] if gradients else None
    for fraction in (0.01, 0.1, 0.3):
        merged = merge("tatr", base, taus, grads=grads, trust_fraction=fraction, lam=1.0)
        assert_same(update(merged, base), tatr_reference(taus, fraction, grads=grads))


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_strength_variants_are_task_arithmetic(seed: int) -> None:
    base, taus = random_case(seed)
    ta = merge("ta", base, taus, lam=0.4)
    assert_same(merge("tatr", base, taus, trust_fraction=0.0, lam=0.4), ta)
    assert_same(merge("dare", base, taus, p=0.0, lam=0.4, seed=seed), ta)
    assert_same(merge("breadcrumbs", base, taus, beta=0.0, gamma=1.0, lam=0.4), ta)
    assert_same(merge("ties+tatr", base, taus, trust_fraction=0.0), merge("ties", base, taus))


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_dare_equals_task_arithmetic_in_expectation(p: float) -> None:
    base, taus = random_case(0, shapes=((20,),))
    draws = torch.stack([merge("dare", base, taus, p=p, lam=1.0, seed=s)["p0"] for s in range(400)])
    ta = merge("ta", base, taus, lam=1.0)["p0"]
    stderr = draws.std(0) / 400 ** 0.5
    assert ((draws.mean(0) - ta).abs() <= 4 * stderr + 1e-6).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_passes_non_merged_tensors_through_and_keeps_dtypes(method: str) -> None:
    base, taus = random_case(0)
    base["head"] = torch.randn(3)  # a float tensor without task vector: frozen
    base = {k: v.to(torch.bfloat16) if k == "p0" else v for k, v in base.items()}
    merged = merge(method, base, taus)
    assert list(merged) == list(base)
    assert torch.equal(merged["count"], base["count"]) and torch.equal(merged["head"], base["head"])
    assert merged["head"] is not base["head"]  # a copy, not the caller's tensor
    assert {k: v.dtype for k, v in merged.items()} == {k: v.dtype for k, v in base.items()}


class CountingReads(dict[str, torch.Tensor]):
    """A task vector that counts how often each tensor is read."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(tensors)
        self.reads: Counter[str] = Counter()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.reads[name] += 1
        return super().__getitem__(name)


@pytest.mark.parametrize(("method", "reads"), [("ta", 1), ("mean", 1), ("dare", 1), ("breadcrumbs", 1), ("tatr", 4),
                                               ("ties", 4), ("ties+tatr", 7)])
def test_every_task_tensor_is_read_a_fixed_number_of_times(method: str, reads: int) -> None:
    """Streaming: per tensor and task, one read per pass and per use in the merge (tatr: 2 threshold passes,
    then the sum and Omega; ties: 2 threshold passes, the majority pass, the merge)."""
    base, taus = random_case(2)
    counted = [CountingReads(tau) for tau in taus]
    merge(method, base, counted, **({"trust_fraction": 0.1} if "tatr" in method else {}))
    assert all(set(c.reads.values()) == {reads} and c.reads.keys() == c.keys() for c in counted)


def test_rules_do_not_modify_their_inputs() -> None:
    base, taus = random_case(1)
    before = [{k: v.clone() for k, v in tau.items()} for tau in taus]
    for method in METHODS:
        merge(method, base, taus)
    for tau, old in zip(taus, before, strict=True):
        assert_same(tau, old)


# --- exact selection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_fraction_threshold_equals_the_full_sort(seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(int(n), generator=g, dtype=dtype).abs() for n in torch.randint(0, 300, (6,), generator=g)]
    chunks += [torch.randint(0, 4, (200,), generator=g).to(dtype) / 2]  # many ties, and zeros
    values = torch.cat(chunks).sort(descending=True).values
    for fraction in (0.0, 1e-3, 0.15, 0.5, 0.9, 1.0):
        m = int(fraction * values.numel())
        expected = values[m - 1].item() if m else float("inf")
        got = top_fraction_thresholds(lambda: ([c, 2 * c] for c in chunks), [fraction, fraction])
        assert got == [expected, 2 * expected]


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "params", "message"), [
    ("median", {}, r"unknown merge method 'median' \(did you mean 'mean'\?\); "
                   r"allowed: mean, ta, ties, breadcrumbs, dare, tatr, ties\+tatr"),
    ("ta", {"k": 0.2}, "merge method 'ta' has no parameter 'k'; its parameters: lam"),
    ("ties", {"k": 1.5}, r"ties: k=1.5 is not allowed \(0 < k <= 1\)"),
    ("dare", {"p": 1.0}, r"dare: p=1.0 is not allowed \(0 <= p < 1\)"),
    ("dare", {"seed": 0.5}, "dare: seed=0.5 is not allowed"),
    ("breadcrumbs", {"beta": 0.9, "gamma": 0.5}, "beta=0.9 must not exceed gamma=0.5"),
    ("tatr", {"lam": "x"}, "tatr: lam='x' is not allowed"),
])
def test_bad_methods_and_parameters_are_named(method: str, params: dict[str, object], message: str) -> None:
    base, taus = random_case(0)
    with pytest.raises(ValueError, match=message):
        merge(method, base, taus, **params)  # type: ignore[arg-type]


def test_gradients_are_checked() -> None:
    base, taus = random_case(0, n=2)
    with pytest.raises(ValueError, match="merge method 'ties' does not use gradients"):
        merge("ties", base, taus, grads=taus)
    with pytest.raises(ValueError, match="1 gradient state dicts for 2 task vectors"):
        merge("tatr", base, taus, grads=taus[:1])
    with pytest.raises(ValueError, match="gradient 1: no tensor 'p1'"):
        merge("tatr", base, taus, grads=[taus[0], {"p0": taus[1]["p0"]}])
    with pytest.raises(ValueError, match=r"gradient 0: tensor 'p0' has shape \(2,\)"):
        merge("tatr", base, taus, grads=[{**tau, "p0": torch.ones(2)} for tau in taus])
