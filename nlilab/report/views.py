"""Tables for notebooks and the report, as pandas DataFrames built from a metrics.json dict."""

from __future__ import annotations

from nlilab import EVAL_SPLITS, LABELS


def summary_frame(metrics: dict):
    """One row per scored split: the held-out validation split (what selection used, where present), then the
    two test splits: accuracy (mean over seeds, its 95% interval and spread), macro-F1, majority-class baseline."""
    import pandas as pd

    rows = []
    for split in ("validation", *EVAL_SPLITS):
        m = metrics.get(split)
        if not m:
            continue
        interval = m.get("interval") or {}
        rows.append({"split": split, "role": "selection" if split == "validation" else "test", "n": m["n"],
                     "accuracy": m["accuracy"], "ci95_low": interval.get("low"), "ci95_high": interval.get("high"),
                     "accuracy_std": m.get("accuracy_std", 0.0), "macro_f1": m["macro_f1"],
                     "majority_baseline": metrics.get("majority_baseline", {}).get(split, {}).get("accuracy")})
    return pd.DataFrame(rows).set_index("split")


def history_frame(metrics: dict):
    import pandas as pd

    return pd.DataFrame(metrics.get("history", [])).set_index("epoch") if metrics.get("history") else pd.DataFrame()


def cost_frame(metrics: dict):
    """What the method costs, measured so that it compares across methods whatever ran beside it (the `cost`
    block: CPU time per seed, the exclusive timing window's throughput, per-seed peak memory)."""
    import pandas as pd

    cost = metrics.get("cost") or {}
    window = cost.get("window") or {}
    row = {k: metrics.get(k) for k in ("trainable_params", "total_params", "trainable_share", "disk_size_bytes")}
    row.update({k: cost.get(k) for k in ("train_cpu_time_s", "train_wall_time_s", "eval_cpu_time_s",
                                         "eval_wall_time_s", "peak_rss_mb", "gpu_peak_mb", "training_peak_mb")
                if k in cost})
    row["window_per_second"] = window.get("samples_per_second", window.get("examples_per_second"))
    return pd.DataFrame([row])


def per_genre_frame(metrics: dict):
    import pandas as pd

    rows = [{"split": split, "genre": g, "accuracy": acc}
            for split in EVAL_SPLITS for g, acc in metrics[split].get("per_genre", {}).items()]
    return pd.DataFrame(rows).set_index(["split", "genre"])


def confusion_frame(metrics: dict, split: str):
    import pandas as pd

    return pd.DataFrame(metrics[split]["confusion"], index=[f"gold {l}" for l in LABELS],
                        columns=[f"pred {l}" for l in LABELS])
