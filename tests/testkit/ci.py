"""No check silently skipped in CI: with ``CI=true`` a skipped test is reported as failed, unless it is marked
``gpu`` (CI has no GPU). A skip means something the suite needs is missing (``docker-compose``, a data package):
``make setup`` installs all of it, so in CI a skip is a broken setup, not a pass."""

from __future__ import annotations

import os
from typing import Any

EXEMPT_MARKERS = ("gpu",)


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """``CI=true`` (set by GitHub Actions, GitLab CI and most others)."""
    return (environ if environ is not None else os.environ).get("CI", "").lower() in ("true", "1", "yes")


def skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def fail_skip_in_ci(item: Any, report: Any, environ: dict[str, str] | None = None) -> None:
    """Turn ``report`` (a skipped test's) into a failure when in CI and ``item`` has no exempt marker.
    Expected failures (xfail, reported as skipped with ``wasxfail``) are left alone."""
    if not (report.skipped and in_ci(environ)) or hasattr(report, "wasxfail"):
        return
    if any(item.get_closest_marker(name) is not None for name in EXEMPT_MARKERS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI (CI=true), which makes a skip an error: {skip_reason(report)}. "
                       "Install what is missing (make setup) or mark the test gpu if it needs a GPU.")
