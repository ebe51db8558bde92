"""Matplotlib figures for notebooks and the report; `to_data_uri` embeds one in a self-contained page."""

from __future__ import annotations

import base64
import io

from . import LABELS


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
    for ax, title in zip(axes, ("training loss", "validation loss", "validation accuracy (matched)")):
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
