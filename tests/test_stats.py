"""Intervals and paired differences: coverage on simulated data, known differences recovered, alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from nlilab.evaluation import stats as S


def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth, n, trials = 0.62, 300, 200
    hits = 0
    for t in range(trials):
        correct = rng.random(n) < truth
        ci = S.accuracy_interval(correct, resamples=400, seed=t)
        hits += ci["low"] <= truth <= ci["high"]
    # 200 trials at 95%: the count's standard deviation is about 3, so 180..198 is about +-5 sd.
    assert 180 <= hits <= 198, hits


def test_single_seed_width_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    n = 2000
    correct = rng.random(n) < 0.7
    p = correct.mean()
    analytic = 2 * sps.norm.ppf(0.975) * np.sqrt(p * (1 - p) / n)
    ci = S.accuracy_interval(correct, resamples=4000)
    assert ci["high"] - ci["low"] == pytest.approx(analytic, rel=0.08)
    assert (ci["low"] + ci["high"]) / 2 == pytest.approx(p, abs=0.004)


def test_the_interval_is_reproducible_and_names_its_method():
    correct = np.random.default_rng(0).random((3, 200)) < 0.5
    assert S.accuracy_interval(correct) == S.accuracy_interval(correct)
    assert "3" in S.accuracy_interval(correct)["method"] and "200 rows" in S.accuracy_interval(correct)["method"]


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(1)
    same = np.repeat(rng.random((1, 400)) < 0.6, 3, axis=0)
    varied = np.stack([rng.random(400) < p for p in (0.5, 0.6, 0.7)])
    width = lambda c: S.accuracy_interval(c)["high"] - S.accuracy_interval(c)["low"]
    assert width(varied) > 1.5 * width(same)


def test_a_known_paired_difference_is_recovered():
    rng = np.random.default_rng(11)
    n = 3000
    base = rng.random(n) < 0.6
    flip = rng.random(n) < 0.1  # b loses exactly these rows of a's correct ones: a - b = share of a & flip
    b = base & ~flip
    expected = (base & flip).mean()
    d = S.paired_difference(base, b)
    assert d["diff"] == pytest.approx(expected) and d["n"] == n
    assert d["low"] < expected < d["high"] and d["low"] > 0
    assert S.verdict(d) == "higher" and S.verdict(S.paired_difference(b, base)) == "lower"
    # McNemar's exact test agrees that the difference is real.
    assert d["mcnemar_p"] < 1e-6


def test_an_identical_pair_is_not_distinguishable():
    correct = np.random.default_rng(5).random((2, 150)) < 0.55
    d = S.paired_difference(correct, correct)
    assert d["diff"] == 0 and d["low"] <= 0 <= d["high"]
    assert S.verdict(d) == "not distinguishable on these 150 rows"


def test_paired_intervals_are_narrower_than_unpaired_ones_for_correlated_methods():
    rng = np.random.default_rng(2)
    a = rng.random(500) < 0.6
    b = a.copy()
    b[rng.choice(500, 25, replace=False)] ^= True  # b differs from a on 5% of the rows
    d = S.paired_difference(a, b)
    ia, ib = S.accuracy_interval(a), S.accuracy_interval(b)
    assert d["high"] - d["low"] < 0.5 * ((ia["high"] - ia["low"]) + (ib["high"] - ib["low"])) / 2


def test_rows_are_aligned_by_pair_id_whatever_their_order():
    rng = np.random.default_rng(4)
    ids = [f"p{i}" for i in range(50)]
    labels = rng.integers(0, 3, 50)
    preds_a = np.where(rng.random(50) < 0.7, labels, (labels + 1) % 3)
    preds_b = np.where(rng.random(50) < 0.4, labels, (labels + 2) % 3)
    block_a = {"pair_ids": ids, "labels": labels.tolist(), "predictions_runs": [preds_a.tolist()]}
    order = rng.permutation(50)[:30]  # b scored a shuffled subset of 30 of a's rows, plus one row a lacks
    block_b = {"pair_ids": [ids[i] for i in order] + ["extra"], "labels": [int(labels[i]) for i in order] + [0],
               "predictions_runs": [[int(preds_b[i]) for i in order] + [0]]}
    aligned = S.align(block_a, block_b)
    assert aligned.shared == 30 and (aligned.n_a, aligned.n_b) == (50, 31)
    kept = sorted(order)  # a's order
    assert aligned.pair_ids == [ids[i] for i in kept]
    assert np.array_equal(aligned.correct_a[0], preds_a[kept] == labels[kept])
    assert np.array_equal(aligned.correct_b[0], preds_b[kept] == labels[kept])
    d = S.compare(block_a, block_b)
    expected = (preds_a[kept] == labels[kept]).mean() - (preds_b[kept] == labels[kept]).mean()
    assert d["diff"] == pytest.approx(expected) and d["n"] == 30 and d["n_b"] == 31


def test_unanswered_prompts_count_wrong_and_old_blocks_have_no_interval():
    block = {"labels": [0, 1, 2, 0], "predictions_runs": [[0, -1, 2, -1]]}
    assert S.correct_matrix(block).tolist() == [[True, False, True, False]]
    assert S.block_interval({"accuracy": 0.5}) is None
    stored = {"low": 0.1, "high": 0.2, "level": 0.95, "method": "x"}
    assert S.block_interval({**block, "interval": stored}) is stored
    assert S.block_interval(block) == S.accuracy_interval(S.correct_matrix(block))


def test_paired_rows_must_match_in_number():
    with pytest.raises(ValueError):
        S.paired_difference(np.ones(5, bool), np.ones(6, bool))
