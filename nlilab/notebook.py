"""What a method notebook shows of a run: the calls its shared cells make.

Each method notebook explains its method and draws what only that method has (a sweep's curve, a prompt, a
quantization footprint); the parts every notebook shows the same way live here, one function per section:
`describe` (what the experiment runs), `scores` (accuracy against the majority class, with the collapse
warning), `costs`, `history`, `errors`, and `show` for any figure from `nlilab.report.plots`.

Everything here reads a config or a metrics dict (the one `run(config)` returns, i.e. metrics.json's body) and
prints or displays; nothing computes a result. The tables come from `nlilab.report.views` and the figures from
`nlilab.report.plots`, the same builders as the report, so a notebook and the report cannot disagree.

The runner's cache key follows the nlilab modules a notebook imports, this one included: keep its imports to
what every notebook needs (no method or experiment module), or a change there would rerun every experiment.
"""

from __future__ import annotations

import base64

from IPython.display import Image, display

from nlilab import EVAL_SPLITS, params
from nlilab.evaluation.metrics import COLLAPSE_MARGIN, is_collapsed
from nlilab.report import plots, views

TRAINED_COLLAPSE = "this run collapsed (it learned next to nothing; see the prediction counts below)"


def show(fig) -> None:
    """Put a figure from nlilab.report.plots into the cell's output as a PNG, and close it.

    plots draws on matplotlib's Agg backend (the report is built without a display), so Jupyter's inline
    backend never sees the figure: returning it, or leaving it open, shows nothing. The PNG is the report's own
    rendering of it (plots.to_data_uri), so the notebook page and the report show the same picture."""
    uri = plots.to_data_uri(fig)
    display(Image(data=base64.b64decode(uri.split(",", 1)[1]), format="png"))


def describe(cfg: dict, *blocks: str, label: str | None = None, seeds: list[int] | None = None,
             note: str | None = None, **facts) -> None:
    """What the experiment runs, before it runs: one line (model, method with its `label`, the method's
    `facts` in order, the seeds), the `note` if any, then the named config `blocks` (e.g. "lora", "train").
    `seeds` defaults to params.experiment_seeds; pass the method's own where it decides differently."""
    parts = [f"model: {cfg['model']}"] if cfg.get("model") else []
    if cfg.get("method"):
        parts.append(f"method: {cfg['method']}" + (f" ({label})" if label else ""))
    parts += [f"{name}: {value}" for name, value in facts.items()]
    parts.append(f"seeds: {params.experiment_seeds(cfg) if seeds is None else seeds}")
    print("   ".join(parts))
    if note:
        print("NOTE:", note)
    if blocks:
        display({name: cfg[name] for name in blocks})


def _collapsed(metrics: dict) -> bool:
    """The run's own flag; recomputed from the numbers only for a dict that lacks it."""
    if metrics.get("collapsed") is not None:
        return bool(metrics["collapsed"])
    return bool(_collapsed_splits(metrics))


def _collapsed_splits(metrics: dict) -> list[str]:
    """'validation_matched 33.3% against 34.4%' for each test split within the margin of its majority class."""
    out = []
    for split in EVAL_SPLITS:
        acc = (metrics.get(split) or {}).get("accuracy")
        base = ((metrics.get("majority_baseline") or {}).get(split) or {}).get("accuracy")
        if acc is not None and base is not None and is_collapsed(acc, base):
            out.append(f"{split} {100 * acc:.1f}% against {100 * base:.1f}%")
    return out


def collapse_warning(metrics: dict, if_collapsed: str = TRAINED_COLLAPSE) -> str | None:
    """The warning line for a collapsed run (None otherwise): the margin (from COLLAPSE_MARGIN), the splits
    and numbers that are within it, and what a collapse means for this method (`if_collapsed`)."""
    if not _collapsed(metrics):
        return None
    where = "; ".join(_collapsed_splits(metrics))
    return (f"WARNING: accuracy is within {100 * COLLAPSE_MARGIN:g} points of the majority class"
            + (f" ({where})" if where else "") + f": {if_collapsed}.")


def scores(metrics: dict, if_collapsed: str = TRAINED_COLLAPSE) -> None:
    """The collapse warning when the run collapsed, then the summary table (views.summary_frame): per scored
    split its role, rows, accuracy with its 95% interval and spread over seeds, macro-F1, majority class."""
    warning = collapse_warning(metrics, if_collapsed)
    if warning:
        print(warning)
    display(views.summary_frame(metrics))


def costs(metrics: dict, *fields: str) -> None:
    """What the method trains and costs (views.cost_frame), with any further top-level `fields` of the metrics
    as extra columns, then the method's notes (what it built: adapter and head sizes, quantized layers...)."""
    frame = views.cost_frame(metrics)
    for name in fields:
        frame[name] = [metrics.get(name)]
    display(frame)
    if metrics.get("method_notes"):
        display(metrics["method_notes"])


def history(metrics: dict) -> None:
    """The per-epoch table (mean over seeds) and its learning curves."""
    if not metrics.get("history"):
        print("no per-epoch history was recorded")
        return
    display(views.history_frame(metrics))
    name = metrics.get("method_label") or metrics.get("experiment") or "this run"
    show(plots.learning_curves({name: metrics["history"]}))


def errors(metrics: dict) -> None:
    """Errors by class and by genre: both test splits' confusion matrices (summed over seeds) side by side, the
    count of each predicted label (a run stuck on one class shows at once), then accuracy per genre."""
    splits = [s for s in EVAL_SPLITS if metrics.get(s)]
    show(plots.confusion_grid({s: metrics[s]["confusion"] for s in splits}))
    for split in splits:
        counts = metrics[split].get("prediction_distribution") or {}
        print(f"{split} predictions: " + ", ".join(f"{label} {n:,}" for label, n in counts.items()))
    display(views.per_genre_frame(metrics))
