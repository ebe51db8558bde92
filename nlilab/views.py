"""Tables for notebooks and the report, as pandas DataFrames built from a metrics.json dict."""

from __future__ import annotations

from . import EVAL_SPLITS, LABELS


def summary_frame(metrics: dict):
    """One row per dev split: accuracy (mean ± spread over seeds), macro-F1, majority-class baseline."""
    import pandas as pd

    rows = []
    for split in EVAL_SPLITS:
        m = metrics[split]
        rows.append({"split": split, "n": m["n"], "accuracy": m["accuracy"], "accuracy_std": m.get("accuracy_std", 0.0),
                     "macro_f1": m["macro_f1"],
                     "majority_baseline": metrics.get("majority_baseline", {}).get(split, {}).get("accuracy")})
    return pd.DataFrame(rows).set_index("split")


def history_frame(metrics: dict):
    import pandas as pd

    return pd.DataFrame(metrics.get("history", [])).set_index("epoch") if metrics.get("history") else pd.DataFrame()


def cost_frame(metrics: dict):
    import pandas as pd

    keys = ("trainable_params", "total_params", "trainable_share", "train_wall_time_s", "train_samples_per_second",
            "cpu_rss_peak_mb", "gpu_peak_mb", "disk_size_bytes")
    return pd.DataFrame([{k: metrics.get(k) for k in keys}])


def per_genre_frame(metrics: dict):
    import pandas as pd

    rows = [{"split": split, "genre": g, "accuracy": acc}
            for split in EVAL_SPLITS for g, acc in metrics[split].get("per_genre", {}).items()]
    return pd.DataFrame(rows).set_index(["split", "genre"])


def confusion_frame(metrics: dict, split: str):
    import pandas as pd

    return pd.DataFrame(metrics[split]["confusion"], index=[f"gold {l}" for l in LABELS],
                        columns=[f"pred {l}" for l in LABELS])
