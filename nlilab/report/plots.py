"""Matplotlib figures for notebooks and the report; `to_data_uri` embeds one in a self-contained page."""

from __future__ import annotations

import base64
import io

from nlilab import LABELS


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def label_distribution(describe_frame):
    """Stacked bars of label counts per split (from data.describe)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    frame = describe_frame[list(LABELS)]
    frame.plot(kind="bar", stacked=True, ax=ax, rot=0)
    ax.set_ylabel("pairs")
    ax.set_title("Labels per split")
    return fig


def genre_distribution(data):
    plt = _plt()
    fig, axes = plt.subplots(1, len(data.splits), figsize=(12, 3), sharey=False)
    for ax, (split, ds) in zip(axes, data.splits.items()):
        genres = ds.to_pandas()["genre"].value_counts().sort_index()
        genres.plot(kind="barh", ax=ax)
        ax.set_title(split)
        ax.set_xlabel("pairs")
    fig.tight_layout()
    return fig


def learning_curves(histories: dict[str, list[dict]]):
    """Training loss, validation loss and accuracy per epoch, one line per experiment."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name, history in histories.items():
        if not history:
            continue
        epochs = [row["epoch"] for row in history]
        for ax, key in zip(axes, ("train_loss", "validation_loss", "accuracy")):
            ax.plot(epochs, [row.get(key) for row in history], marker="o", label=name)
    for ax, title in zip(axes, ("training loss", "validation loss", "accuracy (held-out validation split)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix, title: str = ""):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(LABELS)), [l[:7] for l in LABELS])
    ax.set_yticks(range(len(LABELS)), [l[:7] for l in LABELS])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ report figures
# The comparison report's figures: each takes plain numbers (already read out of metrics.json), so notebooks can
# draw the same pictures for one experiment.
def _yerr(values: list[float], intervals: list[dict | None], stds: list[float | None] | None = None):
    """Asymmetric error bars (percent) from 95% intervals (fractions); a point without one falls back to its
    spread over seeds, or none."""
    stds = stds or [None] * len(values)
    # A percentile interval need not contain the mean (e.g. all seeds but one at the same score): clip at zero.
    low = [max(0.0, v - 100 * iv["low"]) if iv else 100 * (s or 0) for v, iv, s in zip(values, intervals, stds)]
    high = [max(0.0, 100 * iv["high"] - v) if iv else 100 * (s or 0) for v, iv, s in zip(values, intervals, stds)]
    return [low, high]


def paired_differences(rows: list[dict]):
    """A forest plot: one row per contrast, its difference (points) and paired 95% interval; zero marked.
    `rows`: label, diff, low, high (points)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.38 * max(1, len(rows))))
    ys = list(range(len(rows)))
    diffs = [r["diff"] for r in rows]
    ax.errorbar(diffs, ys, xerr=[[d - r["low"] for d, r in zip(diffs, rows)], [r["high"] - d for d, r in zip(diffs, rows)]],
                fmt="o", capsize=3, color="#2e6fbd")
    ax.axvline(0, ls="--", lw=1, color="#888")
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference in accuracy, dev-matched (points)")
    ax.grid(alpha=.3, axis="x")
    fig.tight_layout()
    return fig


def accuracy_scatter(rows: list[dict], xlabel: str, log_x: bool = False, title: str = ""):
    """Dev-matched accuracy (%) against a cost, one labelled point per experiment. `rows`: label, x, accuracy,
    optional baseline (drawn as a dashed line) and collapsed (drawn hollow, in red)."""
    import math

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))

    def spot(row):  # position on a unit square, to find labels that would print on top of each other
        xs = [math.log10(r["x"]) if log_x else r["x"] for r in rows if r["x"] > 0 or not log_x]
        ys = [r["accuracy"] for r in rows]
        x = math.log10(row["x"]) if log_x else row["x"]
        return ((x - min(xs)) / ((max(xs) - min(xs)) or 1), (row["accuracy"] - min(ys)) / ((max(ys) - min(ys)) or 1))

    placed = []
    for row in rows:
        bad = row.get("collapsed")
        ax.scatter([row["x"]], [row["accuracy"]], s=46, zorder=3, edgecolors="#c0392b" if bad else "none",
                   facecolors="none" if bad else "#2e6fbd", linewidths=1.6)
        if row.get("interval"):
            ax.errorbar([row["x"]], [row["accuracy"]], yerr=_yerr([row["accuracy"]], [row["interval"]]),
                        fmt="none", ecolor="#9bb5d6", capsize=3, zorder=2)
        text = row["label"] + (" (collapsed)" if bad else "")
        x, y = spot(row)
        width = 0.011 * len(text)  # about how much of the axis width the label covers
        # Labels whose spans overlap at about the same height move down one line each.
        crowd = sum(1 for px, py, pw in placed if px - width < x < px + pw + 0.02 and abs(py - y) < 0.06)
        placed.append((x, y, width))
        ax.annotate(text, (row["x"], row["accuracy"]), fontsize=7.5, xytext=(4, 4 - 10 * crowd),
                    textcoords="offset points")
    baselines = [r["baseline"] for r in rows if r.get("baseline") is not None]
    if baselines:
        ax.axhline(max(baselines), ls="--", lw=1, color="#888", label="majority class")
        ax.legend(fontsize=8, loc="lower right")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy, dev-matched (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=.3)
    fig.tight_layout()
    return fig


def confusion_grid(matrices: dict[str, list], title: str = "", per_row: int = 6):
    """One small confusion matrix (rows gold, columns predicted) per experiment."""
    import math

    plt = _plt()
    n = max(1, len(matrices))
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols + 0.4, 2.4 * rows + 0.3), squeeze=False)
    short = [label[:7] for label in LABELS]
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(LABELS)), short, fontsize=7)
        ax.set_yticks(range(len(LABELS)), short, fontsize=7)
        ax.set_title(name, fontsize=8.5)
    for ax in list(axes.flat)[len(matrices):]:
        ax.axis("off")
    fig.supxlabel("predicted", fontsize=9)
    fig.supylabel("gold", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def per_genre_heatmaps(tables: dict[str, dict[str, dict[str, float]]]):
    """Accuracy (%) per genre: one heatmap per split, experiments as rows, genres as columns.
    `tables`: split -> experiment -> genre -> accuracy (fraction)."""
    plt = _plt()
    tables = {s: t for s, t in tables.items() if t}
    fig, axes = plt.subplots(1, max(1, len(tables)), figsize=(6.2 * max(1, len(tables)),
                                                                1.2 + 0.42 * max((len(t) for t in tables.values()), default=1)),
                             squeeze=False)
    for ax, (split, table) in zip(axes.flat, tables.items()):
        names = list(table)
        genres = sorted({g for row in table.values() for g in row})
        grid = [[100 * table[n][g] if g in table[n] else float("nan") for g in genres] for n in names]
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7.5)
        ax.set_xticks(range(len(genres)), genres, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"accuracy per genre (%), {split}", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_vs_learning_rate(series: dict[str, list[dict]], baseline: float | None = None):
    """A learning-rate sweep: accuracy (%) per value on a log axis, one line per split, error bars for the
    spread over seeds. `series`: split -> [{value, accuracy, accuracy_std, collapsed}]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for index, (split, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda p: p["value"])
        values = [100 * p["accuracy"] for p in pts]
        ax.errorbar([p["value"] for p in pts], values, marker="o", capsize=3, label=split,
                    yerr=_yerr(values, [p.get("interval") for p in pts], [p.get("accuracy_std") for p in pts]))
        for p in pts:
            if p.get("collapsed") and index == 0:  # one flag per swept value, on the first split's line
                ax.annotate("collapsed", (p["value"], 100 * p["accuracy"]), fontsize=7, color="#c0392b",
                            xytext=(-6, 8), textcoords="offset points", ha="right")
    if baseline is not None:
        ax.axhline(100 * baseline, ls="--", lw=1, color="#888", label="majority class")
    ax.set_xscale("log")
    values = sorted({p["value"] for pts in series.values() for p in pts})
    if values:  # tick exactly the values tried (after set_xscale, which resets the ticks)
        ax.set_xticks(values, [f"{v:g}" for v in values], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("learning rate")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_shares(distributions: dict[str, dict[str, int]]):
    """Share of each predicted label per row (e.g. 'gold' and each prompting experiment), as stacked bars: a
    model stuck on one label shows as one colour."""
    plt = _plt()
    names = list(distributions)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.45 * max(1, len(names))))
    left = [0.0] * len(names)
    extra = sorted({k for d in distributions.values() for k in d} - set(LABELS))  # e.g. unparsed answers
    for label in (*LABELS, *extra):
        shares = [100 * distributions[n].get(label, 0) / max(1, sum(distributions[n].values())) for n in names]
        ax.barh(names, shares, left=left, label=label)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of predictions (%)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def lr_sweep(metrics: dict):
    """Accuracy against learning rate for a sweep experiment's metrics.json (both dev splits, spread over seeds,
    collapsed points marked, the majority class as a dashed line)."""
    from nlilab import EVAL_SPLITS
    from nlilab.evaluation.stats import block_interval

    points = (metrics.get("sweep") or {}).get("points") or []
    series = {split: [{"value": p["value"], "accuracy": p[split]["accuracy"], "interval": block_interval(p[split]),
                       "accuracy_std": p[split].get("accuracy_std"), "collapsed": p.get("collapsed")}
                      for p in points if p.get(split)] for split in ("validation", *EVAL_SPLITS)}
    baseline = ((metrics.get("majority_baseline") or {}).get(EVAL_SPLITS[0]) or {}).get("accuracy")
    return accuracy_vs_learning_rate(series, baseline)
