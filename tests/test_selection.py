"""Selection apart from testing: the held-out validation split, nested test subsamples, stable row ids, and what
the experiment drivers choose on (issue: a comparison a reviewer can trust)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nlilab import EVAL_SPLITS, SPLITS
from nlilab.data.nli import HELD_OUT, load_nli, stratified_indices, stratified_order
from nlilab.errors import DataError
from nlilab.evaluation.metrics import aggregate_split, score


def cfg(**extra):
    base = {"source": "bundled", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "train_limit": None,
            "eval_limit": None, "validation_size": 0.1}
    return base | extra


def _labels(n0=60, n1=40, n2=20):
    return [0] * n0 + [1] * n1 + [2] * n2


def test_every_prefix_of_the_stratified_order_keeps_label_shares():
    labels = _labels()
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(len(labels)))
    for size in (6, 17, 50, 90):
        counts = Counter(labels[i] for i in order[:size])
        for label, total in Counter(labels).items():
            assert abs(counts[label] - size * total / len(labels)) <= 1, (size, label, counts)


def test_smaller_test_samples_are_inside_larger_ones():
    labels = _labels(300, 300, 300)
    small, large = stratified_indices(labels, 150, seed=0), stratified_indices(labels, 500, seed=0)
    assert len(small) == 150 and len(large) == 500 and set(small) <= set(large)
    assert stratified_indices(labels, 150, seed=1) != small


def test_validation_is_held_out_of_train_stratified_and_seeded():
    data = load_nli(cfg(), seed=0)
    train, held = data["train"], data[HELD_OUT]
    assert set(train["pairID"]).isdisjoint(held["pairID"])
    labeled = len(train) + len(held)
    assert len(held) == round(0.1 * labeled)
    counts = Counter(held["label"])
    assert max(counts.values()) - min(counts.values()) <= 1
    other = load_nli(cfg(), seed=1)
    assert set(other[HELD_OUT]["pairID"]) != set(held["pairID"])
    # the test splits are not touched by the held-out draw
    for split in EVAL_SPLITS:
        assert list(data[split]["pairID"]) == list(other[split]["pairID"])


def test_validation_size_as_a_count_and_train_limit_counts_training_rows_only():
    data = load_nli(cfg(validation_size=30, train_limit=120), seed=0)
    assert len(data[HELD_OUT]) == 30 and len(data["train"]) == 120
    assert set(data["train"]["pairID"]).isdisjoint(data[HELD_OUT]["pairID"])
    # a fraction is taken of the rows training would use (train_limit), not of the whole pool
    assert len(load_nli(cfg(validation_size=0.25, train_limit=120), seed=0)[HELD_OUT]) == 30


def test_validation_size_that_leaves_nothing_to_train_is_refused():
    with pytest.raises(DataError, match="validation_size 100000 leaves no training rows"):
        load_nli(cfg(validation_size=100000))


def _write_folder_without_ids(folder: Path) -> Path:
    """The README's hub schema allows rows without pairID."""
    folder.mkdir(parents=True)
    for split in SPLITS:
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(24):
                handle.write(json.dumps({"premise": f"{split} premise number {i}.", "hypothesis": f"Claim {i}.",
                                         "genre": "fiction", "label": i % 3}) + "\n")
    return folder


def test_rows_without_pair_id_get_stable_distinct_ids(tmp_path):
    folder = _write_folder_without_ids(tmp_path / "mnli")
    first = load_nli(cfg(source="local", local_dir=str(folder)), seed=0)
    again = load_nli(cfg(source="local", local_dir=str(folder)), seed=0)
    for split in (*SPLITS, HELD_OUT):
        ids = list(first[split]["pairID"])
        assert all(ids) and len(set(ids)) == len(ids), split
        assert ids == list(again[split]["pairID"])
    all_ids = [i for split in (*SPLITS, HELD_OUT) for i in first[split]["pairID"]]
    assert len(set(all_ids)) == len(all_ids)


def test_one_shot_finds_demonstrations_in_a_folder_without_pair_ids(tmp_path):
    from nlilab.prompting.demos import choose_demos

    data = load_nli(cfg(source="local", local_dir=str(_write_folder_without_ids(tmp_path / "mnli"))), seed=0)
    eval_ids = {pid for split in EVAL_SPLITS for pid in data[split]["pairID"]}
    plan = choose_demos(data["train"], seed=0, shots=1, rotate=True, exclude_ids=eval_ids)
    assert plan.rows and all(row["pairID"] in set(data["train"]["pairID"]) for row in plan.rows)


def test_aggregated_prediction_distribution_keeps_labels_counted_zero():
    labels = [0, 1, 2, 0, 1, 2]
    collapsed = [score(labels, [0] * 6), score(labels, [0, 0, 0, 0, 0, 1])]
    dist = aggregate_split(collapsed)["prediction_distribution"]
    assert dist == {"entailment": 11, "neutral": 1, "contradiction": 0}


def test_aggregate_keeps_rows_predictions_and_an_interval():
    labels, ids = [0, 1, 2, 0, 1, 2, 0, 1], [f"r{i}" for i in range(8)]
    runs = [score(labels, [0, 1, 2, 0, 1, 2, 2, 2], pair_ids=ids), score(labels, [0, 1, 0, 0, 1, 2, 0, 1], pair_ids=ids)]
    out = aggregate_split(runs)
    assert out["pair_ids"] == ids and out["labels"] == labels
    assert out["predictions_runs"] == [runs[0]["predictions"], runs[1]["predictions"]]
    assert out["accuracy"] == pytest.approx((6 / 8 + 7 / 8) / 2)
    assert out["interval"]["low"] < out["accuracy"] < out["interval"]["high"]


def test_sweep_chooses_on_validation_not_on_a_test_split(monkeypatch, tmp_path):
    """The value best on the held-out split wins even where another value scores higher on dev-matched."""
    from nlilab.experiments import encoder

    def block(acc):
        return {"accuracy": acc, "n": 10}

    scores = {1e-4: (0.40, 0.70), 1e-3: (0.60, 0.50)}  # value -> (validation, dev-matched)

    def fake_summarize(runs, data):
        value = runs[0]["value"]
        val, test = scores[value]
        return {HELD_OUT: block(val), "validation_matched": block(test), "validation_mismatched": block(test),
                "collapsed": False, "train_wall_time_s": 1.0, "seeds": [0], "cost": {"train_cpu_time_s": 2.0}}

    monkeypatch.setattr(encoder, "train_seeds", lambda config, prepared, out, value: [{"value": value}])
    monkeypatch.setattr(encoder, "summarize", fake_summarize)

    class Data(dict):
        pass

    data = Data({HELD_OUT: list(range(7))})
    config = {"output_dir": str(tmp_path), "sweep": {"param": "learning_rate", "values": [1e-4, 1e-3]}}
    metrics = encoder.run_sweep(config, (data, None, None, None))
    assert metrics["best_value"] == 1e-3
    assert metrics["validation_matched"]["accuracy"] == 0.50  # the chosen model's test score, not the best test
    assert metrics["sweep"]["selected_by"] == f"{HELD_OUT} accuracy"
    assert metrics["sweep"]["total_cpu_time_s"] == 4.0
    assert metrics["selection"]["rows"] == 7 and "1e-3" in metrics["selection"]["what"].replace("0.001", "1e-3")
