"""Data from the three sources, the -1 filter, stratified subsampling and malformed rows."""

import json
from pathlib import Path

import pytest

from nlilab import SPLITS
from nlilab.data.nli import (
    BUNDLED_DIR,
    data_fingerprint,
    load_nli,
    read_jsonl,
    stratified_indices,
)
from nlilab.errors import DataError

ROWS = [  # our own toy rows, two per label plus an unlabeled one
    ("The kettle boiled over.", "Water spilled.", 0), ("A dog slept.", "An animal rested.", 0),
    ("The bus was late.", "It rained that day.", 1), ("Mia baked bread.", "Mia baked for a party.", 1),
    ("The shop was closed.", "The shop was open.", 2), ("He whispered.", "He shouted.", 2),
    ("She read a book.", "She liked it.", -1),
]


def write_hf_folder(folder: Path, rows=ROWS):
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i, (p, h, y) in enumerate(rows):
                genre = "fiction" if split != "validation_mismatched" else "science"
                handle.write(json.dumps({"pairID": f"{split}-{i}", "premise": p, "hypothesis": h,
                                         "genre": genre, "label": y}) + "\n")
    return folder


def cfg(source="bundled", **extra):
    base = {"source": source, "local_dir": None, "hub_id": "nyu-mll/multi_nli", "train_limit": None,
            "eval_limit": None}
    return base | extra


def test_bundled_set_loads_and_drops_unlabeled_rows():
    data = load_nli(cfg())
    for split in SPLITS:
        assert len(data[split]) > 100
        assert set(data[split]["label"]) == {0, 1, 2}
        assert data.dropped_unlabeled[split] >= 1
        assert set(data[split].column_names) >= {"premise", "hypothesis", "label", "genre"}


def test_local_folder_in_hub_schema(tmp_path):
    data = load_nli(cfg("local", local_dir=str(write_hf_folder(tmp_path / "mnli"))))
    # 6 labeled training rows: one per label held out for validation (the smallest stratified draw), 3 left
    assert len(data["train"]) == 3 and data.dropped_unlabeled["train"] == 1
    assert sorted(data["validation"]["label"]) == [0, 1, 2]
    assert set(data["train"]["pairID"]).isdisjoint(data["validation"]["pairID"])
    assert data.source == "local"


def test_local_folder_from_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("NLILAB_MNLI_DIR", str(write_hf_folder(tmp_path / "mnli")))
    assert len(load_nli(cfg("local"))["validation_matched"]) == 6


def test_original_multinli_files_with_dash_for_unlabeled(tmp_path):
    names = {"train": "multinli_1.0_train.jsonl", "validation_matched": "multinli_1.0_dev_matched.jsonl",
             "validation_mismatched": "multinli_1.0_dev_mismatched.jsonl"}
    gold = {0: "entailment", 1: "neutral", 2: "contradiction", -1: "-"}
    for split, name in names.items():
        with open(tmp_path / name, "w") as handle:
            for i, (p, h, y) in enumerate(ROWS):
                handle.write(json.dumps({"pairID": str(i), "sentence1": p, "sentence2": h, "genre": "fiction",
                                         "gold_label": gold[y]}) + "\n")
    data = load_nli(cfg("local", local_dir=str(tmp_path)))
    held_out = sorted(data["validation"]["label"])
    assert sorted(list(data["train"]["label"]) + held_out) == [0, 0, 1, 1, 2, 2] and held_out == [0, 1, 2]
    assert data.dropped_unlabeled["train"] == 1


@pytest.mark.parametrize("revision", [None, "da70db2af9d09693783c3320c4249840212ee221"])
def test_hub_source_goes_through_datasets(monkeypatch, revision):
    import datasets

    import nlilab.models.resolve

    def fake_load_dataset(hub_id, revision=None):
        assert (hub_id, revision) == ("nyu-mll/multi_nli", expected_revision), "the pinned revision must be asked for"
        labels = [0, 1, 2, 0, -1]  # 4 labeled: 3 held out for validation (one per label), 1 to train on
        table = {"promptID": list(range(5)), "pairID": list("abcde"), "premise": [f"P {i}." for i in range(5)],
                 "hypothesis": [f"H {i}." for i in range(5)], "genre": ["fiction"] * 5, "label": labels}
        return {split: datasets.Dataset.from_dict(table) for split in SPLITS}

    monkeypatch.setattr(nlilab.models.resolve, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    expected_revision = revision
    data = load_nli(cfg("hub", revision=revision))
    assert len(data["train"]) == 1 and data.dropped_unlabeled["train"] == 1


def test_hub_source_offline_fails_fast_naming_the_dataset(monkeypatch):
    import nlilab.models.resolve

    monkeypatch.setattr(nlilab.models.resolve, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(DataError, match="dataset 'nyu-mll/multi_nli' is not in the local .* --profile cpu"):
        load_nli(cfg("hub"))


def test_stratified_subsample_keeps_label_shares_and_depends_on_seed():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    picked = stratified_indices(labels, 10, seed=0)
    assert [labels[i] for i in picked].count(0) == 5
    assert [labels[i] for i in picked].count(2) == 2
    assert stratified_indices(labels, 10, seed=0) == picked
    assert stratified_indices(labels, 10, seed=1) != picked


def test_limits_apply_and_change_the_fingerprint():
    small = load_nli(cfg(train_limit=30, eval_limit=12), seed=0)
    assert len(small["train"]) == 30 and len(small["validation_mismatched"]) == 12
    assert small.fingerprint != load_nli(cfg(train_limit=31, eval_limit=12), seed=0).fingerprint
    assert small.fingerprint == data_fingerprint(cfg(train_limit=30, eval_limit=12), seed=0)


def test_fingerprint_follows_file_content_not_path(tmp_path):
    a = write_hf_folder(tmp_path / "a")
    b = write_hf_folder(tmp_path / "b")
    assert data_fingerprint(cfg("local", local_dir=str(a)), 0) == data_fingerprint(cfg("local", local_dir=str(b)), 0)
    with open(b / "train.jsonl", "a") as handle:
        handle.write(json.dumps({"premise": "x y", "hypothesis": "z", "label": 0}) + "\n")
    assert data_fingerprint(cfg("local", local_dir=str(a)), 0) != data_fingerprint(cfg("local", local_dir=str(b)), 0)


def test_malformed_row_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n{"premise": "a", "hypothesis": "b", "label": 7}\n')
    with pytest.raises(DataError, match=f"{path}:2: label 7 out of range"):
        read_jsonl(path)


def test_bundled_files_ship_with_the_package():
    assert sorted(p.name for p in BUNDLED_DIR.glob("*.jsonl")) == sorted(f"{s}.jsonl" for s in SPLITS)
