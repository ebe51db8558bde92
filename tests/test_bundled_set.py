"""Checks on the hand-written bundled NLI set in nlilab/data/bundled/."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parents[1] / "nlilab" / "data" / "bundled"
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
    """Room to separate the methods: 3,000 training pairs (the validation split comes out of these) and 600
    pairs in each test split, where one accuracy alone carries about 2 points of standard error."""
    sizes = {split: len(_labeled(data[split])) for split in SPLITS}
    assert sizes["train"] >= 3000 and sizes["validation_matched"] >= 600 and sizes["validation_mismatched"] >= 600, sizes


def test_each_premise_has_one_hypothesis_per_label(data):
    for split in SPLITS:
        by_premise: dict[str, list[int]] = {}
        for row in _labeled(data[split]):
            by_premise.setdefault(row["premise"], []).append(row["label"])
        uneven = {p: labels for p, labels in by_premise.items() if sorted(labels) != [0, 1, 2]}
        assert not uneven, (split, list(uneven.items())[:3])


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


# ------------------------------------------------------------------------------------------------ artifacts
WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def overlap_features(rows) -> list[list[float]]:
    """What a premise and its hypothesis share, and nothing else: the share of the hypothesis's words found in
    the premise, the share of the premise's words found in the hypothesis, their Jaccard index, the count of
    shared words, and the count of hypothesis words that are new."""
    out = []
    for row in rows:
        p, h = _words(row["premise"]), _words(row["hypothesis"])
        shared = len(p & h)
        out.append([shared / max(1, len(h)), shared / max(1, len(p)), shared / max(1, len(p | h)), shared,
                    len(h - p)])
    return out


def test_lexical_overlap_alone_stays_near_chance(data):
    """A classifier that sees only how much the two sentences overlap must not read the label off it (in
    crowd-sourced NLI, high overlap tends to mean entailment and new words neutral)."""
    from sklearn.ensemble import GradientBoostingClassifier

    train = _labeled(data["train"])
    classifier = GradientBoostingClassifier(random_state=0, max_depth=2, n_estimators=100)
    classifier.fit(overlap_features(train), [r["label"] for r in train])
    for split in ("validation_matched", "validation_mismatched"):
        rows = _labeled(data[split])
        accuracy = classifier.score(overlap_features(rows), [r["label"] for r in rows])
        assert accuracy < 0.45, f"overlap-only accuracy on {split} is {accuracy:.3f}"


def _normalized(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def _near_duplicates(a: list[str], b: list[str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs (one text from each list) whose word sets have a Jaccard index of at least `threshold`."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(binary=True, token_pattern=WORD.pattern, lowercase=True).fit(a + b)
    x, y = vectorizer.transform(a), vectorizer.transform(b)
    inter = (x @ y.T).tocoo()
    size_a, size_b = x.sum(axis=1).A1, y.sum(axis=1).A1
    found = []
    for i, j, shared in zip(inter.row, inter.col, inter.data):
        jaccard = shared / (size_a[i] + size_b[j] - shared)
        if jaccard >= threshold:
            found.append((a[i], b[j], float(jaccard)))
    return found


@pytest.mark.parametrize("field", ["premise", "hypothesis"])
def test_no_text_repeated_or_nearly_repeated_across_train_and_test(data, field):
    train = sorted({r[field] for r in data["train"]})
    for split in ("validation_matched", "validation_mismatched"):
        test = sorted({r[field] for r in data[split]})
        same = {_normalized(t) for t in train} & {_normalized(t) for t in test}
        assert not same, (split, sorted(same)[:5])
        # long texts that share 80% of their words are the same item reworded; short hypotheses such as
        # "The shop was closed." may share most words by chance, so only texts of 8 words or more count
        long_train = [t for t in train if len(_words(t)) >= 8]
        long_test = [t for t in test if len(_words(t)) >= 8]
        close = _near_duplicates(long_train, long_test, 0.8)
        assert not close, (split, close[:3])
