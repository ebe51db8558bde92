"""Shared fixtures. `tiny_run` runs the tiny profile once per test session (a minute or two) for the
end-to-end, report and browser tests to inspect; `private_timing_lock` keeps the suite's timing windows apart
from every other nlilab process on the machine."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import REPO, make_profile, snapshot  # noqa: E402


@dataclass
class TinyRun:
    results_dir: Path
    reports_dir: Path
    source: Path  # the snapshot of nlilab/ the run's cache keys hash (its notebooks/ beside it)
    profile_path: Path  # params/tiny.yaml, copied beside the snapshot
    outcomes: list = field(default_factory=list)
    profile: str = "tiny"

    @property
    def report(self) -> Path:
        return self.reports_dir / self.profile / "index.html"

    def run(self) -> list:
        """The tiny profile into this run's folders, on the snapshot's source and notebooks."""
        from nlilab.run import cache
        from nlilab.run.runner import run_profile

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cache, "PACKAGE_DIR", self.source)
            return run_profile(str(self.profile_path), results_dir=self.results_dir, reports_dir=self.reports_dir)


@pytest.fixture(scope="session", autouse=True)
def private_timing_lock(tmp_path_factory):
    """The suite's own folder for nlilab.training.costs' timing lock, for every test and every process it starts
    (runners, kernels and Ray workers inherit the environment). The default is one folder for the whole machine:
    beside someone's real `nlilab run`, each side's timing windows would pause the other's steps, for minutes in
    all on a shared machine. Tests of the lock itself set their own folder (test_costs.py), or unset it to check
    the machine-wide default."""
    from nlilab.training.costs import LOCK_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOCK_ENV, str(tmp_path_factory.mktemp("timing_lock")))
        yield


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for the models the tests run in this process. Where anything else shares the 2 cores
    (a notebook's kernel, another user), two OpenMP threads waiting on each other run several times slower
    (test_prompting.py under a load of 4: 231 s with two threads, 99 s with one). Processes the tests start
    set their own threads (the runner's workers, tests/test_reliability_resume.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """On a snapshot of nlilab/ and notebooks/ (rel_helpers.snapshot): the working tree may be edited while the
    suite runs, and a rerun meant to skip everything would then rightly rerun the whole profile."""
    base = tmp_path_factory.mktemp("tiny_run")
    source = snapshot(base)
    profile_path = make_profile(base, name="tiny", text=(REPO / "params" / "tiny.yaml").read_text(encoding="utf-8"))
    run = TinyRun(base / "results", base / "reports", source, profile_path)
    run.outcomes = run.run()
    return run
