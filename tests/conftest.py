"""Shared fixtures. `tiny_run` runs the tiny profile once per test session (a minute or two) for the
end-to-end, report and browser tests to inspect."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class TinyRun:
    results_dir: Path
    reports_dir: Path
    outcomes: list
    profile: str = "tiny"

    @property
    def report(self) -> Path:
        return self.reports_dir / self.profile / "index.html"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    from nlilab.run.runner import run_profile

    base = tmp_path_factory.mktemp("tiny_run")
    results_dir, reports_dir = base / "results", base / "reports"
    outcomes = run_profile("tiny", results_dir=results_dir, reports_dir=reports_dir)
    return TinyRun(results_dir, reports_dir, outcomes)
