"""Failure isolation (issue 7, item 4) and a real cached rerun (item 7), with real notebooks.

Run 1: the first experiment's notebook raises (a malformed row in its data folder, found only when the notebook
parses it); the second still runs, the report shows the failure with the error's last lines, the command exits
non-zero. Run 2, after the row is fixed: exactly the failed experiment reruns, the finished one is skipped."""

from __future__ import annotations

import html
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import snapshot, stray_tmp_files, torn_row_profile  # noqa: E402

from nlilab import cli  # noqa: E402
from nlilab.results import read_json  # noqa: E402
from nlilab.run import cache, execute


@pytest.mark.slow  # three notebook executions (00_data), about 10 s each
@pytest.mark.parametrize("jobs", ["1", "2"])  # one after the other in this process; two worker processes at once
def test_failing_notebook_is_isolated_then_rerun_alone(tmp_path, capsys, monkeypatch, jobs):
    monkeypatch.setattr(cache, "PACKAGE_DIR", snapshot(tmp_path))
    path, train, good = torn_row_profile(tmp_path)
    results = tmp_path / "results" / "rel"

    rc = cli.main(["run", "--profile", str(path), "--jobs", jobs])
    out, err = capsys.readouterr()
    failure = read_json(results / "local_data" / "failure.json") or {}
    with capsys.disabled():  # what the user sees, for the closing note (pytest -s)
        print(f"\nrun 1: exit {rc}\n{out.splitlines()[-1]}\n{err.strip().splitlines()[-1]}\n"
              f"failure.json error:\n{failure.get('error')}")
    assert rc == 1
    assert "done: local_data: failed, data: ran" in out
    assert "1 experiment(s) failed: local_data" in err
    last = failure["error"].strip().splitlines()[-1]
    # bad input raised in the notebook: its one-line message, without the kernel's traceback
    assert failure["error"] == last and last.startswith(f"DataError: {train}:3: invalid JSON"), failure
    assert not (results / "local_data" / "metrics.json").exists()
    finished = read_json(results / "data" / "metrics.json")
    assert finished["status"] == "ok"
    page = (tmp_path / "reports" / "rel" / "index.html").read_text(encoding="utf-8")
    assert "FAILED: local_data" in page and html.escape(last) in page
    assert stray_tmp_files(tmp_path) == []

    train.write_bytes(good)
    rc = cli.main(["run", "--profile", str(path), "--jobs", jobs])
    out, err = capsys.readouterr()
    with capsys.disabled():
        print(f"run 2 (row fixed): exit {rc}\n{out.splitlines()[-1]}")
    assert rc == 0, err
    assert "done: local_data: ran, data: skipped" in out
    assert read_json(results / "data" / "metrics.json") == finished  # the finished result stayed as it was
    sizes = read_json(results / "local_data" / "metrics.json")["data_sizes"]
    # the 6 labeled training rows: one per label held out for validation, the rest trained on
    assert (sizes["train"], sizes["validation"]) == (3, 3)
    assert not (results / "local_data" / "failure.json").exists()
    assert "FAILED" not in (tmp_path / "reports" / "rel" / "index.html").read_text(encoding="utf-8")
    assert stray_tmp_files(tmp_path) == []


@pytest.mark.parametrize("ename, evalue, expect_lines", [
    ("ZeroDivisionError", "division by zero", (2, 12)),  # a bug: the last lines of the kernel's traceback
    ("DataError", "train.jsonl:3: invalid JSON", (1, 1)),  # bad input: its message alone
])
def test_error_tail(ename, evalue, expect_lines):
    from papermill.exceptions import PapermillExecutionError

    frames = [f"\x1b[0;31mFile /x/nlilab/mod.py:{i}, in f{i}()\x1b[0m" for i in range(20)]
    exc = PapermillExecutionError(3, 3, "metrics = encoder.run(cfg)", ename, evalue,
                                  frames + [f"\x1b[0;31m{ename}\x1b[0m: {evalue}"])
    tail = execute.error_tail(exc)
    lines = tail.splitlines()
    assert expect_lines[0] <= len(lines) <= expect_lines[1], tail
    assert "\x1b" not in tail and f"{ename}: {evalue}" in lines[-1], tail
