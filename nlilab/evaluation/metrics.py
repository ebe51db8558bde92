"""Scores from predictions: accuracy, macro-F1, per-genre accuracy, confusion matrix, majority baseline.

Plain numpy, so that encoder, prompting and QLoRA runs are scored by the very same code.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from nlilab import LABELS

COLLAPSE_MARGIN = 0.02  # a run within 2 points of the majority class has learned nothing useful


def confusion(labels, preds, n: int = len(LABELS)) -> list[list[int]]:
    """Rows are gold labels, columns predictions."""
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)), 1)
    return matrix.tolist()


def macro_f1(matrix) -> float:
    m = np.asarray(matrix, dtype=float)
    tp = np.diag(m)
    precision = np.divide(tp, m.sum(0), out=np.zeros_like(tp), where=m.sum(0) > 0)
    recall = np.divide(tp, m.sum(1), out=np.zeros_like(tp), where=m.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def majority_baseline(train_labels, eval_labels) -> dict:
    """Accuracy of always predicting the training set's most frequent label."""
    majority = Counter(int(x) for x in train_labels).most_common(1)[0][0]
    eval_labels = np.asarray(eval_labels, dtype=int)
    return {"label": LABELS[majority], "accuracy": float((eval_labels == majority).mean())}


def score(labels, preds, genres=None, pair_ids=None) -> dict:
    """All split-level metrics for one set of predictions, with the predictions themselves (row order), so that
    intervals and paired comparisons can be computed from the results alone."""
    labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    matrix = confusion(labels, preds)
    result = {
        "n": int(len(labels)),
        "accuracy": float((labels == preds).mean()) if len(labels) else 0.0,
        "macro_f1": macro_f1(matrix),
        "confusion": matrix,
        "prediction_distribution": {name: int((preds == i).sum()) for i, name in enumerate(LABELS)},
        "labels": labels.tolist(),
        "predictions": preds.tolist(),
    }
    if pair_ids is not None:
        result["pair_ids"] = [str(i) for i in pair_ids]
    if genres is not None:
        genres = np.asarray(genres)
        result["per_genre"] = {
            str(g): float((labels[genres == g] == preds[genres == g]).mean()) for g in sorted(set(genres.tolist()))
        }
    return result


def is_collapsed(accuracy: float, baseline: float) -> bool:
    return accuracy <= baseline + COLLAPSE_MARGIN


def _mean_std(values) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summed_distribution(distributions: list[dict]) -> dict:
    """Prediction counts summed over seeds, every label kept: adding Counters would drop a label counted zero,
    and a collapsed run's record would then omit the classes it never predicted."""
    keys = list(dict.fromkeys(k for d in distributions for k in d))
    return {k: int(sum(d.get(k, 0) for d in distributions)) for k in keys}


def _row_record(per_run: list[dict]) -> dict:
    """The rows and every seed's predictions, with the accuracy interval they give (absent in old run files)."""
    if any("predictions" not in r for r in per_run):
        return {}
    from nlilab.evaluation.stats import block_interval

    first = per_run[0]
    out = {"labels": first["labels"], "predictions_runs": [r["predictions"] for r in per_run]}
    if "pair_ids" in first:
        out["pair_ids"] = first["pair_ids"]
    out["interval"] = block_interval(out)
    return out


def aggregate_split(per_run: list[dict]) -> dict:
    """Combine one split's metrics over seeds: means and spreads, confusion matrices summed, the rows and every
    seed's predictions kept, and the accuracy's 95% interval (rows and seeds resampled)."""
    acc_mean, acc_std = _mean_std([r["accuracy"] for r in per_run])
    f1_mean, f1_std = _mean_std([r["macro_f1"] for r in per_run])
    out = {
        "n": per_run[0]["n"],
        "accuracy": acc_mean,
        "accuracy_std": acc_std,
        "accuracy_runs": [r["accuracy"] for r in per_run],
        "macro_f1": f1_mean,
        "macro_f1_std": f1_std,
        "confusion": np.sum([r["confusion"] for r in per_run], axis=0).tolist(),
        "prediction_distribution": summed_distribution([r["prediction_distribution"] for r in per_run]),
    }
    out.update(_row_record(per_run))
    if "per_genre" in per_run[0]:
        out["per_genre"] = {g: float(np.mean([r["per_genre"][g] for r in per_run])) for g in per_run[0]["per_genre"]}
    return out


def mean_history(histories: list[list[dict]]) -> list[dict]:
    """Per-epoch history averaged over seeds (epochs aligned by position)."""
    if not histories:
        return []
    length = min(len(h) for h in histories)
    out = []
    for i in range(length):
        rows = [h[i] for h in histories]
        merged = {}
        for key in rows[0]:
            values = [r.get(key) for r in rows if r.get(key) is not None]
            merged[key] = float(np.mean(values)) if values else None
        out.append(merged)
    return out
