"""Uncertainty of accuracies: bootstrap intervals, paired differences, and the words a finding may use.

An evaluation split is a sample of rows, and a method's seeds are a sample of training runs; both vary. Each
interval here resamples the rows (the same rows for every seed, since every seed scored them) and, where there
are several seeds, the seeds too. Resampling is vectorised (one matrix product per chunk of resamples) and
seeded, so a report rebuilt from the same results shows the same intervals.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
RESAMPLES = 2000
_CHUNK = 250  # resamples per matrix product: bounds memory at _CHUNK x rows counts on full MultiNLI


def _as_matrix(correct) -> np.ndarray:
    """Seeds x rows as floats; a 1-D array is one seed."""
    arr = np.asarray(correct, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"expected a (seeds x rows) array with at least one row, got shape {arr.shape}")
    return arr


def _row_weights(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """How often each row is drawn in `count` bootstrap resamples of n rows (count x n), as a share of n.

    The counts of n uniform draws with replacement are multinomial(n, 1/n each), the same distribution as
    rng.multinomial gives; but that draws n - 1 binomials per resample, about five times slower than drawing the
    n indices and counting them (one bincount for the chunk, each resample offset into its own n bins)."""
    picks = rng.integers(0, n, size=(count, n))
    picks += np.arange(count)[:, None] * n
    return np.bincount(picks.ravel(), minlength=count * n).reshape(count, n) / n


def _seed_means(rng: np.random.Generator, per_seed: np.ndarray) -> np.ndarray:
    """Mean over a resample of the seeds, one per row of per_seed (resamples x seeds)."""
    count, seeds = per_seed.shape
    if seeds == 1:
        return per_seed[:, 0]
    picks = rng.integers(0, seeds, size=(count, seeds))
    return np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)


def _bootstrap(matrices: list[np.ndarray], signs: list[float], resamples: int, seed: int) -> np.ndarray:
    """Resampled values of sum(sign * accuracy): rows drawn jointly for all matrices, seeds per matrix."""
    rng = np.random.default_rng(seed)
    n = matrices[0].shape[1]
    out = []
    for start in range(0, resamples, _CHUNK):
        weights = _row_weights(rng, n, min(_CHUNK, resamples - start))
        total = np.zeros(len(weights))
        for matrix, sign in zip(matrices, signs):
            total += sign * _seed_means(rng, weights @ matrix.T)
        out.append(total)
    return np.concatenate(out)


def _method(matrices: list[np.ndarray], resamples: int) -> str:
    seeds = " and ".join(str(m.shape[0]) for m in matrices)
    return f"percentile bootstrap, {resamples} resamples of the {matrices[0].shape[1]} rows and of the seeds ({seeds})"


def accuracy_interval(correct, level: float = LEVEL, resamples: int | None = None, seed: int = 0) -> dict:
    """Interval for the mean accuracy over seeds; correct is bool (seeds x rows) or (rows,)."""
    resamples = resamples or RESAMPLES  # read at call time, so a caller (or a fast test) may change it
    matrix = _as_matrix(correct)
    values = _bootstrap([matrix], [1.0], resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {"low": float(low), "high": float(high), "level": level, "method": _method([matrix], resamples)}


def paired_difference(correct_a, correct_b, level: float = LEVEL, resamples: int | None = None, seed: int = 0) -> dict:
    """Interval for accuracy(a) - accuracy(b) on the same rows in the same order (paired bootstrap).

    The same resampled rows serve both sides, so what the two methods share (easy and hard rows) cancels; the
    seeds of each side are resampled on their own and may differ in number.
    """
    resamples = resamples or RESAMPLES
    a, b = _as_matrix(correct_a), _as_matrix(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired rows differ in number: {a.shape[1]} and {b.shape[1]}; align them first")
    values = _bootstrap([a, b], [1.0, -1.0], resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    out = {
        "diff": float(a.mean() - b.mean()),
        "low": float(low),
        "high": float(high),
        "level": level,
        "method": "paired " + _method([a, b], resamples),
        "n": int(a.shape[1]),
    }
    if a.shape[0] == 1 and b.shape[0] == 1:
        out["mcnemar_p"] = mcnemar_p(a[0] > 0, b[0] > 0)
    return out


def mcnemar_p(correct_a, correct_b) -> float:
    """Exact McNemar test (two-sided binomial test on the rows exactly one side got right)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(_scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def correct_matrix(block: dict) -> np.ndarray | None:
    """Seeds x rows bool from a split block's predictions_runs and labels; None for files without them.

    A prediction of -1 (a prompt answer naming no label) never equals a label, so it counts wrong.
    """
    runs, labels = block.get("predictions_runs"), block.get("labels")
    if not runs or labels is None:
        return None
    return np.asarray(runs, dtype=int) == np.asarray(labels, dtype=int)[None, :]


def block_interval(block: dict) -> dict | None:
    """The block's stored interval, else one computed from its predictions, else None (old files)."""
    if block.get("interval"):
        return block["interval"]
    correct = correct_matrix(block)
    return accuracy_interval(correct) if correct is not None else None


class Aligned(NamedTuple):
    correct_a: np.ndarray  # seeds_a x shared rows
    correct_b: np.ndarray  # seeds_b x shared rows
    pair_ids: list[str]  # the shared rows, in block a's order
    n_a: int
    n_b: int

    @property
    def shared(self) -> int:
        return len(self.pair_ids)


def align(block_a: dict, block_b: dict) -> Aligned | None:
    """Both blocks' correctness on the rows they share (by pair id), in a's order; None without predictions."""
    a, b = correct_matrix(block_a), correct_matrix(block_b)
    ids_a, ids_b = block_a.get("pair_ids"), block_b.get("pair_ids")
    if a is None or b is None or ids_a is None or ids_b is None:
        return None
    where_b = {pid: i for i, pid in enumerate(ids_b)}
    keep_a = [i for i, pid in enumerate(ids_a) if pid in where_b]
    keep_b = [where_b[ids_a[i]] for i in keep_a]
    return Aligned(a[:, keep_a], b[:, keep_b], [ids_a[i] for i in keep_a], len(ids_a), len(ids_b))


def compare(block_a: dict, block_b: dict, **kwargs) -> dict | None:
    """Paired difference a - b on the shared rows, with how many rows each side had; None if none shared."""
    aligned = align(block_a, block_b)
    if aligned is None or aligned.shared == 0:
        return None
    out = paired_difference(aligned.correct_a, aligned.correct_b, **kwargs)
    out.update(n_a=aligned.n_a, n_b=aligned.n_b)
    return out


def verdict(difference: dict) -> str:
    """'higher', 'lower' or 'not distinguishable on these N rows', from the paired interval only."""
    if difference["low"] > 0:
        return "higher"
    if difference["high"] < 0:
        return "lower"
    return f"not distinguishable on these {difference['n']} rows"


def intervals_overlap(a: dict, b: dict) -> bool:
    """Whether two unpaired intervals overlap (used only where the rows differ, so no pairing exists)."""
    return a["low"] <= b["high"] and b["low"] <= a["high"]
