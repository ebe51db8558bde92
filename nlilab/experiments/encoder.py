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
from nlilab.experiments.skeleton import selection_record, summarize
from nlilab.experiments.trained import Trained
from nlilab.methods import encoder as methods
from nlilab.models.resolve import resolve_model
from nlilab.results import experiment_dir
from nlilab.training.trainer import resolve_device, tokenize_splits


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


class Encoder(Trained):
    def __init__(self, config: dict, prepared=None):
        super().__init__(config)
        if prepared is not None:
            self.data, self.resolved, self.tokenizer, self.tokenized = prepared

    def prepare(self) -> None:
        self.data, self.resolved, self.tokenizer, self.tokenized = prepare(self.config)

    def build(self):
        return methods.build(self.config, self.resolved.path)

    def measure(self) -> dict:
        if not self.config.get("sweep"):
            return super().measure()
        return run_sweep(self.config, (self.data, self.resolved, self.tokenizer, self.tokenized))

    def method(self) -> str:
        return self.config["method"]

    def label(self, metrics: dict) -> str:
        return methods.method_label(self.config, metrics.get("best_value"))


def train_seeds(config: dict, prepared, out_dir: Path, learning_rate: float | None = None) -> list[dict]:
    return Encoder(config, prepared).run_seeds(out_dir, learning_rate=learning_rate)


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
    return Encoder(config).run()
