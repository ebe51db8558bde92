"""Checks on the hand-written bundled NLI set in nlilab/bundled/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parents[1] / "nlilab" / "bundled"
SPLITS = ("train", "validation_matched", "validation_mismatched")
KEYS = {"pairID", "premise", "hypothesis", "genre", "label"}


def _read(split):
    with open(BUNDLED / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def data():
    return {split: _read(split) for split in SPLITS}


def _labeled(rows):
    return [r for r in rows if r["label"] != -1]


@pytest.mark.parametrize("split", SPLITS)
def test_schema(data, split):
    assert data[split], f"{split} is empty"
    for row in data[split]:
        assert set(row) == KEYS, row
        for key in ("pairID", "premise", "hypothesis", "genre"):
            assert isinstance(row[key], str) and row[key].strip(), (key, row)
        assert type(row["label"]) is int and row["label"] in (-1, 0, 1, 2), row


def test_pair_ids_unique_across_files(data):
    ids = [r["pairID"] for split in SPLITS for r in data[split]]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]


def test_enough_labeled_rows(data):
    assert sum(len(_labeled(data[split])) for split in SPLITS) >= 1200


@pytest.mark.parametrize("split", SPLITS)
def test_labels_balanced(data, split):
    labeled = _labeled(data[split])
    counts = Counter(r["label"] for r in labeled)
    for label in (0, 1, 2):
        share = counts[label] / len(labeled)
        assert 0.28 <= share <= 0.39, (split, label, share)


@pytest.mark.parametrize("split", SPLITS)
def test_has_unlabeled_rows(data, split):
    assert any(r["label"] == -1 for r in data[split])


def test_genres_matched_and_mismatched(data):
    genres = {split: {r["genre"] for r in data[split]} for split in SPLITS}
    assert genres["validation_matched"] == genres["train"]
    assert genres["validation_mismatched"].isdisjoint(genres["train"])


def test_hypothesis_only_baseline_is_weak(data):
    pytest.importorskip("sklearn")
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train = _labeled(data["train"])
    vectorizer = CountVectorizer(lowercase=True, ngram_range=(1, 1))
    features = vectorizer.fit_transform([r["hypothesis"] for r in train])
    labels = [r["label"] for r in train]
    classifier = LogisticRegression(max_iter=2000).fit(features, labels)
    # the classifier does fit the training hypotheses, so a low score below is a property of the data
    assert classifier.score(features, labels) > 0.5
    for split in ("validation_matched", "validation_mismatched"):
        rows = _labeled(data[split])
        accuracy = classifier.score(vectorizer.transform([r["hypothesis"] for r in rows]),
                                    [r["label"] for r in rows])
        assert accuracy < 0.55, f"hypothesis-only accuracy on {split} is {accuracy:.3f}"
