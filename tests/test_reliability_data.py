"""Malformed data files fail with a DataError naming the file and the line (issue 7, item 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import hf_rows, make_profile, original_row, write_mnli  # noqa: E402

from nlilab import cli  # noqa: E402

# (no use of runner)
from nlilab.data.nli import (  # noqa: E402
    ORIGINAL_NAMES,
    data_fingerprint,
    ensure_hub_dataset_available,
    load_nli,
)
from nlilab.errors import DataError  # noqa: E402
from nlilab.run import execute  # noqa: E402


def _local(folder: Path) -> dict:
    return {"source": "local", "local_dir": str(folder), "hub_id": "unused", "train_limit": None, "eval_limit": None}


def _row(**changes) -> bytes:
    row = hf_rows(1)[0]
    row.update(changes)
    for key, value in list(row.items()):
        if value is ...:
            del row[key]
    return (json.dumps(row) + "\n").encode()


# (id, split, the bytes that replace line 3 of that split's file, text the message must contain after file:3)
ROWS = [
    ("missing_field", "train", _row(hypothesis=...), "missing field(s) hypothesis; expected premise, hypothesis, label"),
    ("label_out_of_range", "train", _row(label=3), "label 3 out of range; expected 0 (entailment)"),
    ("label_as_text", "validation_matched", _row(label="neutral"), "label 'neutral' out of range"),
    ("empty_premise", "train", _row(premise="   "), "empty or non-text premise ('   ')"),
    ("null_hypothesis", "validation_mismatched", _row(hypothesis=None), "empty or non-text hypothesis (None)"),
    ("invalid_json", "train", b'{"premise": "A man", "hypothesis": "x", "label": 0\n', "invalid JSON"),
    ("truncated_last_write", "train", b'{"pairID": "p9", "premise": "A ma', "invalid JSON"),
    ("not_utf8", "validation_matched", _row(premise="caf\u00e9").replace("\\u00e9".encode(), b"\xe9"),
     "not valid UTF-8"),
    ("not_an_object", "train", b'["A man", "Someone", 0]\n', "expected a JSON object, got list"),
]


@pytest.mark.parametrize("split, line, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_malformed_row_names_file_and_line(tmp_path, split, line, expected):
    files = write_mnli(tmp_path / "mnli")
    lines = files[split].read_bytes().splitlines(keepends=True)
    lines[2] = line
    files[split].write_bytes(b"".join(lines))
    with pytest.raises(DataError) as info:
        load_nli(_local(tmp_path / "mnli"))
    message = str(info.value)
    print(message)
    assert message.startswith(f"{files[split]}:3: "), message
    assert expected in message, message
    assert "\n" not in message


def test_line_numbers_count_blank_lines(tmp_path):
    files = write_mnli(tmp_path / "mnli")
    text = files["train"].read_text().splitlines()
    files["train"].write_text("\n".join(text[:2] + ["", ""] + ["{bad"] + text[2:]) + "\n")
    with pytest.raises(DataError, match=rf"^{files['train']}:5: invalid JSON"):
        load_nli(_local(tmp_path / "mnli"))


def _labeled_training_rows(data) -> dict[str, tuple[str, int]]:
    """pairID -> (premise, label) of the labeled training rows, wherever the held-out validation split put them."""
    rows = {}
    for split in ("train", "validation"):
        ds = data[split]
        rows.update(zip(ds["pairID"], zip(ds["premise"], ds["label"])))
    return rows


def test_byte_order_mark_is_accepted(tmp_path):
    files = write_mnli(tmp_path / "mnli")
    files["train"].write_bytes(b"\xef\xbb\xbf" + files["train"].read_bytes())
    expected = {r["pairID"]: (r["premise"], r["label"]) for r in hf_rows(6)}
    assert _labeled_training_rows(load_nli(_local(tmp_path / "mnli"))) == expected


@pytest.mark.parametrize("content", ["", "\n\n"], ids=["zero_bytes", "blank_lines"])
def test_empty_file(tmp_path, content):
    files = write_mnli(tmp_path / "mnli")
    files["validation_mismatched"].write_text(content)
    with pytest.raises(DataError, match=rf"^{files['validation_mismatched']}: the file is empty"):
        load_nli(_local(tmp_path / "mnli"))


def test_split_missing_from_folder(tmp_path):
    files = write_mnli(tmp_path / "mnli")
    files["validation_mismatched"].unlink()
    with pytest.raises(DataError) as info:
        load_nli(_local(tmp_path / "mnli"))
    assert str(info.value) == (f"{tmp_path / 'mnli'}: split file(s) missing: validation_mismatched.jsonl "
                               "(or multinli_1.0_dev_mismatched.jsonl)")


def test_split_with_no_labeled_rows(tmp_path):
    files = write_mnli(tmp_path / "mnli")
    files["validation_matched"].write_text("".join(json.dumps({**r, "label": -1}) + "\n" for r in hf_rows(4)))
    with pytest.raises(DataError, match=rf"^{files['validation_matched']}: no labeled rows \(4 row\(s\)"):
        load_nli(_local(tmp_path / "mnli"))


def _write_original(folder: Path, golds: dict[str, list[str | None]]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, name in ORIGINAL_NAMES.items():
        rows = [original_row(r, g) for r, g in zip(hf_rows(len(golds[split])), golds[split])]
        files[split] = folder / name
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def test_original_schema_with_unlabeled_gold(tmp_path):
    """The multinli_1.0_*.jsonl files: sentence1/sentence2/gold_label, '-' where annotators did not agree."""
    _write_original(tmp_path / "orig", {"train": [None, "-", None, None, "-", None],
                                        "validation_matched": [None, None, "-", None],
                                        "validation_mismatched": [None, None, None]})
    data = load_nli(_local(tmp_path / "orig"))
    assert {s: len(data[s]) for s in ("validation_matched", "validation_mismatched")} == {
        "validation_matched": 3, "validation_mismatched": 3}
    assert data.dropped_unlabeled == {"train": 2, "validation_matched": 1, "validation_mismatched": 0}
    # rows 2 and 5 (neutral) had gold_label '-'; the other four keep their text and label
    expected = {r["pairID"]: (r["premise"], r["label"]) for i, r in enumerate(hf_rows(6)) if i not in (1, 4)}
    assert _labeled_training_rows(data) == expected


def test_original_schema_bad_gold_label(tmp_path):
    files = _write_original(tmp_path / "orig", {"train": [None, "entailmnet", None],
                                                "validation_matched": [None], "validation_mismatched": [None]})
    with pytest.raises(DataError, match=rf"^{files['train']}:2: gold_label 'entailmnet' is not one of "
                                        "entailment, neutral, contradiction, -"):
        load_nli(_local(tmp_path / "orig"))


def test_missing_split_stops_the_run_before_any_notebook(tmp_path, capsys, monkeypatch):
    """The runner hashes the data files for its cache keys before the first notebook: a missing split is
    found then, and nothing runs."""
    files = write_mnli(tmp_path / "mnli")
    files["train"].unlink()
    monkeypatch.setattr(execute, "execute", lambda config: pytest.fail("a notebook started"))
    path = make_profile(tmp_path, edit=lambda raw: raw["shared"].update(
        data={"source": "local", "local_dir": str(tmp_path / "mnli")}))
    assert cli.main(["run", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "Traceback" not in err and str(path) in err and "nothing was run" in err
    assert f"{tmp_path / 'mnli'}: split file(s) missing: train.jsonl (or multinli_1.0_train.jsonl)" in err
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------- a pinned hub dataset (issue 12)
def _hub_cfg(revision):
    return {"source": "hub", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "revision": revision,
            "train_limit": None, "eval_limit": None, "validation_size": 0.1}


def test_hub_revision_is_part_of_the_data_fingerprint():
    prints = {data_fingerprint(_hub_cfg(r), 0) for r in (None, "main", "a" * 40, "b" * 40)}
    assert len(prints) == 4


def test_pinned_hub_dataset_counts_as_cached_only_at_that_commit(tmp_path, monkeypatch):
    """Offline, another commit's snapshot in the cache is not the pinned data: the run must stop, not load it."""
    import huggingface_hub.constants

    import nlilab.models.resolve

    (tmp_path / "datasets--nyu-mll--multi_nli" / "snapshots" / ("a" * 40)).mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(nlilab.models.resolve, "hub_reachable", lambda *a, **k: False)
    ensure_hub_dataset_available("nyu-mll/multi_nli", "a" * 40)
    ensure_hub_dataset_available("nyu-mll/multi_nli")  # unpinned: any cached copy is what it would load
    with pytest.raises(DataError, match=f"dataset 'nyu-mll/multi_nli' at revision {'b' * 40} is not in the local"):
        ensure_hub_dataset_available("nyu-mll/multi_nli", "b" * 40)
