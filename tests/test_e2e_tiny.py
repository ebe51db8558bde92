"""The tiny profile end to end through papermill: every experiment runs, writes a complete metrics.json,
the report exists and is true to the results, and an unchanged rerun skips everything."""

import json
import re

import pytest

from nlilab import EVAL_SPLITS
from nlilab.params import load_profile

pytestmark = pytest.mark.slow

TRAINED_FIELDS = {"history", "trainable_params", "total_params", "train_wall_time_s", "train_samples_per_second",
                  "cpu_rss_peak_mb"}
SPLIT_FIELDS = {"accuracy", "macro_f1", "per_genre", "confusion", "n"}


def test_every_experiment_ran(tiny_run):
    names = list(load_profile("tiny").experiments)
    assert [o.experiment for o in tiny_run.outcomes] == names
    failed = {o.experiment: o.error for o in tiny_run.outcomes if o.status != "ran"}
    assert not failed, failed


def test_every_metrics_json_is_complete(tiny_run):
    prof = load_profile("tiny")
    for name, config in prof.experiments.items():
        metrics = json.loads((tiny_run.results_dir / "tiny" / name / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["experiment"] == name
        record = metrics["run_record"]
        assert record["profile"] == "tiny" and record["data_fingerprint"] and record["packages"]["torch"]
        if config["kind"] == "data":
            assert metrics["dropped_unlabeled"]["train"] >= 1
            continue
        for split in EVAL_SPLITS:
            assert SPLIT_FIELDS <= set(metrics[split]), (name, split)
            # the confusion matrices are summed over seeds: their diagonal is every seed's correct answers
            rows = metrics[split]["n"] * len(metrics.get("seeds") or [0])
            assert sum(map(sum, metrics[split]["confusion"])) == rows
            correct = sum(metrics[split]["confusion"][k][k] for k in range(len(metrics[split]["confusion"])))
            assert metrics[split]["accuracy"] == pytest.approx(correct / rows), (name, split)
            assert "accuracy" in metrics["majority_baseline"][split]
        if config["kind"] in ("encoder", "qlora"):
            assert TRAINED_FIELDS <= set(metrics), name
            assert metrics["history"] and {"epoch", "train_loss", "validation_loss", "accuracy"} <= set(metrics["history"][0])


def _results_row(page: str, experiment: str) -> dict[str, str]:
    """The results table's row of one experiment, as {column header: cell text} (tags stripped)."""
    def cells(row, tag):
        return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", row, re.S)]

    for table in re.findall(r"<table>(.*?)</table>", page, re.S):
        rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
        header = cells(rows[0], "th")
        if "acc. matched %" not in header:
            continue
        for row in rows[1:]:
            found = dict(zip(header, cells(row, "td")))
            if found.get("experiment") == experiment:
                return found
    raise AssertionError(f"no results-table row for {experiment}")


def test_report_lists_every_experiment_with_its_measured_accuracy(tiny_run):
    page = tiny_run.report.read_text()
    for name, config in load_profile("tiny").experiments.items():
        if config["kind"] == "data":
            continue
        m = json.loads((tiny_run.results_dir / "tiny" / name / "metrics.json").read_text())
        row = _results_row(page, name)
        # the accuracy in the experiment's own row and column, not a number found anywhere on the page
        assert row["acc. matched %"].startswith(f"{100 * m['validation_matched']['accuracy']:.1f}"), (name, row)
        assert row["acc. mismatched %"].startswith(f"{100 * m['validation_mismatched']['accuracy']:.1f}"), (name, row)
    for name in load_profile("tiny").experiments:
        assert (tiny_run.reports_dir / "tiny" / "notebooks" / f"{name}.html").is_file()


def test_executed_notebooks_received_their_parameters(tiny_run):
    nb = json.loads((tiny_run.reports_dir / "tiny" / "notebooks" / "full_finetune.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "'experiment'" not in "".join(injected[0]["source"])
    assert "experiment = \"full_finetune\"" in "".join(injected[0]["source"])


def test_progress_is_text_in_the_executed_notebooks(tiny_run):
    """Under the runner, training reports progress as lines (a widget would reach neither a log nor a terminal)."""
    nb = (tiny_run.reports_dir / "tiny" / "notebooks" / "full_finetune.ipynb").read_text()
    assert "[full_finetune seed 0] training: " in nb and "[full_finetune seed 0] step 2/" in nb
    assert "[full_finetune seed 0] evaluation at epoch 1.00: accuracy " in nb
    log = (tiny_run.reports_dir / "tiny" / "logs" / "lora.log").read_text()  # a parallel run's worker log
    assert "[lora seed 0] step 2/2 (100%)" in log


def test_unchanged_rerun_skips_everything(tiny_run):
    assert {o.status for o in tiny_run.run()} == {"skipped"}
