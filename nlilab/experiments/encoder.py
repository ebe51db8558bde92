"""An encoder experiment end to end: data -> model -> method -> train each seed -> metrics.json.

A plain experiment trains each seed under output_dir/seed_<s>/. A sweep experiment (`sweep:` in its block)
trains every value x every seed under output_dir/lr_<value>/seed_<s>/ and chooses the value with the best
accuracy on the held-out validation split (never on a test split); its metrics.json carries the chosen value's
results at the top level (so it sits in the comparison table like any other row: its test scores are the chosen
model's, scored once) and every point of the sweep under "sweep".
"""

from __future__ import annotations

import time
from pathlib import Path

from nlilab import EVAL_SPLITS
from nlilab.data.nli import HELD_OUT, load_nli
from nlilab.methods import encoder as methods
from nlilab.models.resolve import resolve_model
from nlilab.params import experiment_seeds
from nlilab.results import experiment_dir, write_metrics
from nlilab.training.trainer import (
    fit_and_evaluate,
    resolve_device,
    selection_record,
    summarize,
    tokenize_splits,
)


def prepare(config: dict):
    """Data, resolved model path and tokenized splits: the work shared by every seed."""
    from transformers import AutoTokenizer

    # Cheapest refusals first: a GPU-only setting without a GPU, then a model that cannot be had, and only
    # then the data (which may take a while to read and tokenize).
    resolve_device(config)
    resolved = resolve_model(config["model"], config.get("revision"))
    data = load_nli(config["data"], seed=config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tokenized = tokenize_splits(data, tokenizer, config["train"]["max_length"])
    return data, resolved, tokenizer, tokenized


def train_seed(config: dict, seed: int, prepared, run_dir: Path, learning_rate: float | None = None,
               keep_model: bool = True, window: bool = False) -> dict:
    from transformers import set_seed

    data, resolved, tokenizer, tokenized = prepared
    set_seed(seed)  # before building: the new classification head's initialisation depends on it
    built = methods.build(config, resolved.path)
    run = fit_and_evaluate(built.model, tokenizer, tokenized, data, config, seed, run_dir, save=built.save,
                           learning_rate=learning_rate, keep_model=keep_model, window=window)
    run["method_notes"] = built.notes
    return run


def _keeps_model(config: dict, index: int) -> bool:
    """`keep_models`: 'first' (default) keeps one seed's saved model, enough to reuse the result; the other
    seeds' would be near-copies (1.4 GB each for a full roberta-large)."""
    keep = config.get("keep_models", "first")
    return keep == "all" or (keep == "first" and index == 0)


def train_seeds(config: dict, prepared, out_dir: Path, learning_rate: float | None = None) -> list[dict]:
    return [train_seed(config, seed, prepared, out_dir / f"seed_{seed}", learning_rate,
                       keep_model=_keeps_model(config, i), window=i == 0)
            for i, seed in enumerate(experiment_seeds(config))]


def sweep_dir_name(value: float) -> str:
    return f"lr_{value:g}"


def sweep_point(value: float, summary: dict) -> dict:
    point = {"value": value, "collapsed": summary["collapsed"], "train_wall_time_s": summary["train_wall_time_s"],
             "train_cpu_time_s": (summary.get("cost") or {}).get("train_cpu_time_s"), "seeds": summary["seeds"]}
    point.update({split: summary[split] for split in (HELD_OUT, *EVAL_SPLITS)})
    return point


def run_sweep(config: dict, prepared) -> dict:
    """Train every swept value; the best one by accuracy on the held-out validation split gives the top-level
    fields (ties go to the first value listed)."""
    data = prepared[0]
    out_dir = experiment_dir(config)
    sweep = config["sweep"]
    started = time.perf_counter()
    summaries = {value: summarize(train_seeds(config, prepared, out_dir / sweep_dir_name(value), value), data)
                 for value in sweep["values"]}
    best = max(summaries, key=lambda v: summaries[v][HELD_OUT]["accuracy"])
    metrics = dict(summaries[best])
    metrics["best_value"] = best
    cpu = [(s.get("cost") or {}).get("train_cpu_time_s") for s in summaries.values()]
    metrics["sweep"] = {"param": sweep["param"], "selected_by": f"{HELD_OUT} accuracy",
                        "total_wall_time_s": time.perf_counter() - started,
                        # per value: the mean over seeds, times the seeds; summed over values
                        "total_cpu_time_s": sum(c * len(s["seeds"]) for c, s in zip(cpu, summaries.values()))
                        if all(c is not None for c in cpu) else None,
                        "points": [sweep_point(v, s) for v, s in summaries.items()]}
    metrics["selection"] = selection_record(data, f"{sweep['param']} {best:g} of {len(summaries)} values, by "
                                                  f"mean {HELD_OUT} accuracy over seeds")
    return metrics


def run(config: dict) -> dict:
    """Train every seed (and every swept value) of the experiment, write its metrics.json, return it."""
    prepared = prepare(config)
    data, resolved = prepared[0], prepared[1]
    if config.get("sweep"):
        metrics = run_sweep(config, prepared)
    else:
        metrics = summarize(train_seeds(config, prepared, experiment_dir(config)), data)
    metrics.update(model=config["model"], model_path=resolved.path, model_provenance=resolved.provenance,
                   method=config["method"],
                   method_label=methods.method_label(config, metrics.get("best_value")), method_notes=metrics["runs"][0].get("method_notes"),
                   data_source=data.source, data_fingerprint=data.fingerprint,
                   dropped_unlabeled=data.dropped_unlabeled,
                   data_sizes={split: len(ds) for split, ds in data.splits.items()})
    write_metrics(config, metrics)
    return metrics
