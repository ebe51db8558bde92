"""What the kinds that train a classifier (encoder methods, QLoRA) share: a seed builds its model after seeding,
trains and scores it with the shared Trainer, and records the method's notes beside its scores."""

from __future__ import annotations

from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.experiments.skeleton import Experiment
from nlilab.training.trainer import fit_and_evaluate, remove_checkpoints


def keeps_model(config: dict, index: int) -> bool:
    """`keep_models`: 'first' (default) keeps one seed's saved model, enough to reuse the result; the other
    seeds' would be near-copies (1.4 GB each for a full roberta-large)."""
    keep = config.get("keep_models", "first")
    return keep == "all" or (keep == "first" and index == 0)


def method_notes(runs: list[dict]) -> dict:
    notes = next((r["method_notes"] for r in runs if r.get("method_notes")), None)
    if notes is None:  # a run.json from before the notes were written with it
        raise NlilabError(f"the finished seeds ({', '.join(str(r.get('seed')) for r in runs)}) lack their method "
                          "notes; delete the seed_* folders and run again")
    return notes


class Trained(Experiment):
    """A kind fills in `prepare` (setting `data`, `resolved`, `tokenizer` and `tokenized`) and `build()`, which
    returns the method's `Built` for the prepared model."""

    def build(self):
        raise NotImplementedError

    def run_seed(self, seed: int, run_dir: Path, index: int, learning_rate: float | None = None) -> dict:
        from transformers import set_seed

        set_seed(seed)  # before building: the new head's (and adapters') initialisation depends on it
        built = self.build()
        run = fit_and_evaluate(built.model, self.tokenizer, self.tokenized, self.data, self.config, seed, run_dir,
                               save=built.save, learning_rate=learning_rate,
                               keep_model=keeps_model(self.config, index), window=index == 0)
        run["method_notes"] = built.notes
        return run

    def tidy(self, run_dir: Path) -> None:
        remove_checkpoints(run_dir)

    def record(self, metrics: dict) -> dict:
        return {"method_notes": method_notes(metrics["runs"])}
