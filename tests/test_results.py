"""metrics.json writes are atomic and carry a run record; scores are computed the same for every method."""

import json

import pytest

from nlilab.evaluation.metrics import (
    aggregate_split,
    is_collapsed,
    macro_f1,
    majority_baseline,
    score,
)
from nlilab.results import atomic_write_json, load_results, write_metrics


def test_atomic_write_leaves_old_file_intact_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # fails while serializing
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left over


def test_write_metrics_adds_status_and_run_record(tmp_path):
    config = {"name": "ft", "kind": "encoder", "profile": "tiny", "seed": 0,
              "output_dir": str(tmp_path / "tiny" / "ft")}
    write_metrics(config, {"data_fingerprint": "abc", "validation_matched": {"accuracy": 0.5}})
    loaded = load_results(tmp_path, "tiny")["ft"]
    assert loaded["status"] == "ok" and loaded["run_record"]["data_fingerprint"] == "abc"
    record = loaded["run_record"]
    assert {"profile", "parameters", "packages", "git_commit", "device"} <= set(record)
    assert record["packages"]["torch"]


def test_score_fields():
    result = score([0, 1, 2, 2], [0, 1, 1, 2], ["a", "a", "b", "b"])
    assert result["accuracy"] == 0.75
    assert result["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert result["per_genre"] == {"a": 1.0, "b": 0.5}
    assert result["prediction_distribution"] == {"entailment": 1, "neutral": 2, "contradiction": 1}


def test_macro_f1_matches_hand_computation():
    # class 0: p=1, r=1 -> 1; class 1: p=.5, r=1 -> 2/3; class 2: p=1, r=.5 -> 2/3
    assert macro_f1([[1, 0, 0], [0, 1, 0], [0, 1, 1]]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_majority_baseline_and_collapse():
    base = majority_baseline([0, 0, 1], [0, 1, 2, 2])
    assert base == {"label": "entailment", "accuracy": 0.25}
    assert is_collapsed(0.26, 0.25) and not is_collapsed(0.30, 0.25)


def test_aggregate_over_seeds_gives_mean_and_spread():
    runs = [score([0, 1], [0, 1]), score([0, 1], [0, 0])]
    agg = aggregate_split(runs)
    assert agg["accuracy"] == 0.75 and agg["accuracy_std"] == pytest.approx(0.3535, abs=1e-3)
    assert agg["confusion"] == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
