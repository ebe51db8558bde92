"""The shape every experiment kind fills in: prepare once, run each seed (or read a finished one back), summarize
the seeds, and write metrics.json with the model and the data it ran on.

A kind subclasses `Experiment` and fills in `prepare`, `run_seed`, `method` and `label`; where it records more
than the shared summary it extends `summarize` and `record`. `Experiment.run` is the one driver loop.

A seed's result is its folder's run.json, written atomically once the seed has finished: a rerun reads it back
instead of running the seed again, so a killed run resumes at its first unfinished seed.

In an experiment trained by several processes (nlilab.training.distributed) every process runs this loop and only
rank 0 writes: run.json, metrics.json, and the tidying up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nlilab import EVAL_SPLITS
from nlilab.data.nli import HELD_OUT
from nlilab.evaluation.metrics import (
    aggregate_split,
    is_collapsed,
    majority_baseline,
    mean_history,
)
from nlilab.params import experiment_seeds
from nlilab.results import atomic_write_json, experiment_dir, read_json, write_metrics
from nlilab.training.costs import cost_summary
from nlilab.training.distributed import is_main

RUN_FILE = "run.json"
# What a seed's model is, the same for every seed of an experiment: read from the first seed.
PER_MODEL = ("trainable_params", "total_params", "trainable_share", "disk_size_bytes")


# ================================================================================================ records
def read_run(run_dir) -> dict | None:
    """A finished seed's result; None while the seed has not finished (run.json is written whole or not at all)."""
    return read_json(Path(run_dir) / RUN_FILE)


def write_run(run_dir, run: dict) -> None:
    atomic_write_json(Path(run_dir) / RUN_FILE, run)


def data_record(data) -> dict:
    """Which rows the experiment saw: their source and fingerprint, the unlabeled rows dropped, each split's size."""
    return {"data_source": data.source, "data_fingerprint": data.fingerprint,
            "dropped_unlabeled": data.dropped_unlabeled,
            "data_sizes": {split: len(ds) for split, ds in data.splits.items()}}


def model_record(config: dict, resolved) -> dict:
    """The model as the profile names it, the folder it was loaded from, and where that folder came from."""
    return {"model": config["model"], "model_path": resolved.path, "model_provenance": resolved.provenance}


# ================================================================================================ summary
def baselines(data) -> dict:
    return {split: majority_baseline(data["train"]["label"], data[split]["label"]) for split in EVAL_SPLITS}


def flag_collapse(summary: dict, baseline: dict) -> bool:
    return any(is_collapsed(summary[s]["accuracy"], baseline[s]["accuracy"]) for s in EVAL_SPLITS)


def selection_record(data, what: str = "nothing") -> dict:
    return {"split": HELD_OUT, "rows": len(data[HELD_OUT]), "what": what,
            "test_splits": list(EVAL_SPLITS), "note": "the test splits are scored once per final model"}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _peak(values: list) -> float | None:
    """A peak over seeds is the largest seed's peak: what the experiment needed (a mean of peaks is no peak)."""
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


def summarize(runs: list[dict], data, activity: str = "train") -> dict:
    """metrics.json's body from the seeds' results: every split they scored aggregated over seeds, the
    majority-class baseline and collapse flag, the mean history, time per seed, peak memory, the cost block
    (`activity`: what the seeds' times cover, "train" or "eval"), the seeds and their runs.

    The held-out validation split is scored by the kinds that train, and only they select on it: their summary
    says what was selected (nothing, unless a sweep says otherwise)."""
    splits = [split for split in (HELD_OUT, *EVAL_SPLITS) if split in runs[0]]
    base = baselines(data)
    out = {split: aggregate_split([r[split] for r in runs]) for split in splits}
    if HELD_OUT in splits:
        out["selection"] = selection_record(data)
    out["majority_baseline"] = base
    out["collapsed"] = flag_collapse(out, base)
    out["history"] = mean_history([r.get("history") or [] for r in runs])
    out.update({key: runs[0][key] for key in PER_MODEL if key in runs[0]})
    for key in ("train_wall_time_s", "train_samples_per_second"):
        out[key] = _mean([r.get(key) for r in runs])
    for key in ("cpu_rss_peak_mb", "gpu_peak_mb"):
        out[key] = _peak([r.get(key) for r in runs])
    if all("cost" in r for r in runs):
        window = next((r["window"] for r in runs if r.get("window")), None)
        out["cost"] = cost_summary([r["cost"] for r in runs], window, activity)
    out["seeds"] = [r["seed"] for r in runs]
    out["runs"] = runs
    return out


# ============================================================================================= experiment
class Experiment:
    """One experiment of one kind, from its config (a profile's experiment block with its output folders).

    A kind fills in:
    - `prepare()`: what every seed shares, cheapest refusals first; sets at least `data` and `resolved`.
    - `run_seed(seed, run_dir, index, **options)`: one seed's result, a JSON-able dict. `index` 0 is the first
      seed of a series, the one whose cost is timed.
    - `method()` and `label(metrics)`: the method's short name and the words tables and plots show.
    and where it has more to say than the shared summary: `summarize(runs)`, `record(metrics)` (its own fields
    beside the model and data records), `seeds()`, `tidy(run_dir)`, `measure()`.
    """

    activity = "train"  # what the seeds' times cover, in the cost block

    def __init__(self, config: dict):
        self.config = config
        self.data = None
        self.resolved = None

    # ------------------------------------------------------------------------------------ filled in by a kind
    def prepare(self) -> None:
        raise NotImplementedError

    def run_seed(self, seed: int, run_dir: Path, index: int, **options) -> dict:
        raise NotImplementedError

    def method(self) -> str:
        raise NotImplementedError

    def label(self, metrics: dict) -> str:
        raise NotImplementedError

    def seeds(self) -> list[int]:
        return experiment_seeds(self.config)

    def summarize(self, runs: list[dict]) -> dict:
        return summarize(runs, self.data, self.activity)

    def record(self, metrics: dict) -> dict:
        return {}

    def tidy(self, run_dir: Path) -> None:
        """Remove what only an unfinished seed needed; called once the seed's run.json exists."""

    # ------------------------------------------------------------------------------------------ the loop
    def seed_result(self, seed: int, run_dir: Path, index: int, **options) -> dict:
        """The seed's run.json if it finished before, else the seed run now and its run.json written."""
        run = read_run(run_dir)
        if run is None:
            run = self.run_seed(seed, run_dir, index, **options)
            if is_main():
                write_run(run_dir, run)
        if is_main():
            self.tidy(run_dir)
        return run

    def run_seeds(self, out_dir, **options) -> list[dict]:
        """Every seed under out_dir/seed_<s>/, finished ones read back. `options` go to `run_seed`."""
        return [self.seed_result(seed, Path(out_dir) / f"seed_{seed}", index, **options)
                for index, seed in enumerate(self.seeds())]

    def measure(self) -> dict:
        return self.summarize(self.run_seeds(experiment_dir(self.config)))

    def run(self) -> dict:
        """Prepare, run every seed, summarize, add the model, method and data records, write metrics.json."""
        self.prepare()
        metrics = self.measure()
        if self.config.get("precision_choice"):  # `precision: auto`: what this machine got, and why
            metrics["precision_choice"] = self.config["precision_choice"]
        metrics.update(model_record(self.config, self.resolved), method=self.method(),
                       method_label=self.label(metrics), **self.record(metrics), **data_record(self.data))
        if is_main():
            write_metrics(self.config, metrics)
        return metrics
