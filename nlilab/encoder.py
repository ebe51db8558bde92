"""An encoder experiment end to end: data -> model -> method -> train each seed -> metrics.json."""

from __future__ import annotations

from pathlib import Path

from . import methods
from .data import load_nli
from .models import resolve_model
from .params import experiment_seeds
from .results import experiment_dir, write_metrics
from .training import fit_and_evaluate, summarize, tokenize_splits


def prepare(config: dict):
    """Data, resolved model path and tokenized splits: the work shared by every seed."""
    from transformers import AutoTokenizer

    data = load_nli(config["data"], seed=config["seed"])
    resolved = resolve_model(config["model"])
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tokenized = tokenize_splits(data, tokenizer, config["train"]["max_length"])
    return data, resolved, tokenizer, tokenized


def train_seed(config: dict, seed: int, prepared, run_dir: Path, learning_rate: float | None = None,
               keep_model: bool = True) -> dict:
    from transformers import set_seed

    data, resolved, tokenizer, tokenized = prepared
    set_seed(seed)  # before building: the new classification head's initialisation depends on it
    built = methods.build(config, resolved.path)
    run = fit_and_evaluate(built.model, tokenizer, tokenized, data, config, seed, run_dir, save=built.save,
                           learning_rate=learning_rate, keep_model=keep_model)
    run["method_notes"] = built.notes
    return run


def run(config: dict) -> dict:
    """Train every seed of the experiment and write its metrics.json; returns the metrics."""
    prepared = prepare(config)
    data, resolved = prepared[0], prepared[1]
    out_dir = experiment_dir(config)
    runs = [train_seed(config, seed, prepared, out_dir / f"seed_{seed}", keep_model=i == 0)
            for i, seed in enumerate(experiment_seeds(config))]
    metrics = summarize(runs, data)
    metrics.update(model=config["model"], model_path=resolved.path, method=config["method"],
                   data_source=data.source, data_fingerprint=data.fingerprint,
                   dropped_unlabeled=data.dropped_unlabeled,
                   data_sizes={split: len(ds) for split, ds in data.splits.items()})
    write_metrics(config, metrics)
    return metrics
