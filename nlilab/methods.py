"""Adaptation methods for an encoder classifier: which parameters train, and what must be saved.

Each builder takes the experiment config and a loadable model path and returns a `Built`: the model with its
trainable parameters set, and a `save(folder)` that writes what is needed to reuse the result (a full
checkpoint for full fine-tuning, only the adapter and head for parameter-efficient methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import LABELS


@dataclass
class Built:
    model: object
    save: Callable[[str], None]
    notes: dict  # method facts worth recording in metrics.json (e.g. which modules train)


def _base_classifier(path: str):
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(LABELS))
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()})


def build_full(config: dict, path: str) -> Built:
    model = _base_classifier(path)
    return Built(model, model.save_pretrained, {"trains": "all parameters"})


METHODS: dict[str, Callable[[dict, str], Built]] = {
    "full": build_full,
}


def build(config: dict, path: str) -> Built:
    method = config["method"]
    if method not in METHODS:
        raise NotImplementedError(f"method '{method}' has no builder in nlilab.methods")
    return METHODS[method](config, path)
