"""Paper 000's fine-tuning and merging geometry (Fig. 3, 8, 11): the maths on hand-computed vectors, and the
``epoch-gradients`` and ``base-trajectory`` studies end to end on a tiny subset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from atmflow.analyses import trajectory
from atmflow.analyses.trajectory import epoch_gradients, gram, normalized_norms, pca_2d
from atmflow.rounds.geometry import cosine_matrix
from atmflow.studies.__main__ import main

# 2 tasks, 60 training images, 1-3 epochs: seconds per study on a CPU
RUN_CONFIG = "train-size=60 test-size=20 image-size=32 tasks='mnist,digits' lambda-grid='0.5,1.0' node-wait-s=5.0"


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _close(actual: list[list[float]], expected: list[list[float]]) -> None:
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)


def test_epoch_gradients_norms_and_cosines_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """theta^(0..2) = (0,0), (-3,-4), (-3,-9): g_1 = (3,4), g_2 = (0,5); norms 5 and 5, cos = 20/25."""
    grads = epoch_gradients([_t(0, 0), _t(-3, -4), _t(-3, -9)])
    assert [g.tolist() for g in grads] == [[3, 4], [0, 5]]
    assert normalized_norms(gram(grads)) == pytest.approx([0.5, 0.5])
    _close(cosine_matrix(gram(grads)).tolist(), [[1, 0.8], [0.8, 1]])
    assert normalized_norms(gram([_t(3, 4), _t(0, 0), _t(0, 15)])) == pytest.approx([0.25, 0, 0.75])
    _close(cosine_matrix(gram([_t(1, 0), _t(0, 0), _t(-2, 0)])).tolist(), [[1, 0, -1], [0, 0, 0], [-1, 0, 1]])
    monkeypatch.setattr(trajectory, "CHUNK", 3)  # the chunked Gram matrix equals the direct one
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    _close(gram(list(x)).tolist(), (x.double() @ x.double().T).tolist())
    with pytest.raises(ValueError, match="at least one epoch"):
        epoch_gradients([_t(0, 0)])
    with pytest.raises(ValueError, match="never moved"):
        normalized_norms(gram([_t(0, 0)]))


def test_pca_of_known_points() -> None:
    """A rectangle with sides 4 and 2 rotated into 5-D space and shifted: PC1 is the long side (+-2), PC2 the
    short one (+-1), shares 4/5 and 1/5; the first point gets negative coordinates."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    plane = torch.tensor([[2.0, 1.0], [-2.0, 1.0], [-2.0, -1.0], [2.0, -1.0]], dtype=torch.float64)
    points = [(p @ q[:2] + 7.0).float() for p in plane]
    coords, share = pca_2d(points)
    assert share == pytest.approx((0.8, 0.2), abs=1e-5)
    assert coords == [pytest.approx(c, abs=1e-4) for c in [(-2, -1), (2, -1), (2, 1), (-2, 1)]]
    line, share = pca_2d([_t(0, 0, 1), _t(1, 0, 1), _t(2, 0, 1)])  # on a line: PC2 is zero
    assert line == [pytest.approx(c, abs=1e-6) for c in [(-1, 0), (0, 0), (1, 0)]] and share == pytest.approx((1, 0))
    assert pca_2d([_t(1, 1), _t(4, 5)]) == ([pytest.approx((-2.5, 0)), pytest.approx((2.5, 0))], (1.0, 0.0))
    with pytest.raises(ValueError, match="all points are equal"):
        pca_2d([_t(1, 2), _t(1, 2)])


def _csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _run_study(root: Path, study: str, options: str, figures: set[str]) -> Path:
    """Run ``study`` on the tiny subset through the command line; its output folder, with exactly ``figures``."""
    assert main([study, "--seeds", "0", "--root", str(root), "--run-config", RUN_CONFIG, "--options", options]) == 0
    out = root / study
    assert {p.name for p in (out / "figures").glob("*.png")} == figures
    return out


@pytest.mark.heavy
def test_epoch_gradients_study_end_to_end(tmp_path: Path) -> None:
    out = _run_study(tmp_path / "studies", "epoch-gradients", "norm-epochs=2 cosine-epochs=3",
                     {"normalized_norms.png", "cosine_heatmaps.png"})
    rows = _csv(out / "results.csv")
    for task in ("mnist", "digits"):
        shares = [float(r["value"]) for r in rows if r["task"] == task and r["setting"] == "2 epochs"
                  and r["metric"].startswith("normalized-norm")]
        assert len(shares) == 2 and sum(shares) == pytest.approx(1, abs=1e-5) and min(shares) > 0
        cos = {r["metric"]: float(r["value"]) for r in rows if r["task"] == task and r["setting"] == "3 epochs"
               and r["metric"].startswith("cosine")}
        assert len(cos) == 9 and all(cos[f"cosine {k}-{k}"] == pytest.approx(1, abs=1e-5) for k in (1, 2, 3))
        assert all(cos[f"cosine {i}-{j}"] == cos[f"cosine {j}-{i}"] and -1 <= cos[f"cosine {i}-{j}"] < 1
                   for i in (1, 2, 3) for j in (1, 2, 3) if i != j)
    report = (out / "report.md").read_text()
    assert "| mnist |" in report and "Fig. 3a" in report and "Fig. 3b and 11" in report


@pytest.mark.heavy
def test_base_trajectory_study_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "studies"
    out = _run_study(root, "base-trajectory", "rounds=2", {"pca_trajectory.png"})
    (run,) = {r["run"] for r in _csv(out / "results.csv")}
    results = json.loads((root / "runs" / run / "results.json").read_text())
    labels = [p["label"] for p in results["points"]]
    assert labels == ["pretrained", "ATM round 1", "ATM round 2", "TA", "TIES", "Breadcrumbs"]
    assert results["points"][0]["pc1"] <= 0 and results["points"][0]["pc2"] <= 0
    assert sum(results["explained"]) <= 1 + 1e-9 and results["explained"][0] >= results["explained"][1] > 0
    # the points are centred: the PCA is fitted on exactly these checkpoints
    for pc in ("pc1", "pc2"):
        assert math.fsum(p[pc] for p in results["points"]) == pytest.approx(0, abs=1e-4 * max(
            abs(p[pc]) for p in results["points"]))
    assert all(0 <= p["accuracy"] <= 1 for p in results["points"])
    report = (out / "report.md").read_text()
    assert "| ATM round 2 |" in report and "| Breadcrumbs |" in report
