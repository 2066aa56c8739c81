"""Shared fixtures: tiny, fast run configs over the real embedded data and the real pretrained encoder, and a
spy on the strategies' merge step. In CI (``CI=true``) a skipped test fails unless marked ``gpu`` (testkit.ci)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from testkit.ci import fail_skip_in_ci
from testkit.merge_spy import MergeCall, spy_on_merge_step

if TYPE_CHECKING:
    from atmflow.deploy.loopback import LoopbackDeployment

TINY: dict[str, Any] = {
    "train-size": 100,
    "test-size": 20,
    "image-size": 32,
    "num-threads": 2,
    "node-wait-s": 5.0,
}


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Any]:
    """A run config small enough for seconds per run; outputs go to a temporary folder."""
    return {**TINY, "output-dir": str(tmp_path / "outputs")}


@pytest.fixture
def merge_calls(monkeypatch: pytest.MonkeyPatch) -> list[MergeCall]:
    """Spy on every strategy's merge step: each ``MergeStep.apply`` of the test is recorded, in order."""
    return spy_on_merge_step(monkeypatch)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """No check silently skipped in CI (see :mod:`testkit.ci`)."""
    outcome = yield
    fail_skip_in_ci(item, outcome.get_result())


@pytest.fixture
def deployments() -> Iterator[list[LoopbackDeployment]]:
    """Deployments a test starts; after the test (passed or not) none of their processes may remain."""
    started: list[LoopbackDeployment] = []
    yield started
    for deployment in started:
        deployment.stop()
        assert deployment.leftovers() == [], f"processes left running: {deployment.leftovers()}"
