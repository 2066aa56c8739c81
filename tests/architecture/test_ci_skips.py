"""In CI a skip is an error unless the test is marked gpu (tests/conftest.py through testkit.ci)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from testkit.ci import fail_skip_in_ci, in_ci


def _item(*markers: str) -> Any:
    return SimpleNamespace(get_closest_marker=lambda name: object() if name in markers else None)


def _skipped(reason: str = "docker-compose is not installed") -> Any:
    return SimpleNamespace(skipped=True, outcome="skipped", longrepr=("tests/x.py", 3, f"Skipped: {reason}"))


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_variable(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected


def test_a_skip_fails_in_ci_naming_its_reason() -> None:
    report = _skipped()
    fail_skip_in_ci(_item(), report, {"CI": "true"})
    assert report.outcome == "failed" and "docker-compose is not installed" in report.longrepr


@pytest.mark.parametrize("item, environ", [(_item("gpu"), {"CI": "true"}), (_item(), {})])
def test_gpu_skips_and_skips_outside_ci_stay_skips(item: Any, environ: dict[str, str]) -> None:
    report = _skipped()
    fail_skip_in_ci(item, report, environ)
    assert report.outcome == "skipped"


def test_xfail_stays_xfail() -> None:
    report = _skipped()
    report.wasxfail = "known"
    fail_skip_in_ci(_item(), report, {"CI": "true"})
    assert report.outcome == "skipped"
