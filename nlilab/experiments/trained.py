"""What the kinds that train a classifier (encoder methods, QLoRA) share: a seed builds its model after seeding,
trains and scores it with the shared Trainer, and records the method's notes beside its scores. With `processes`
above 1 the experiment is trained by that many processes (nlilab.training.distributed), each running
nlilab.experiments.launched, and `run` returns what their rank 0 wrote."""

from __future__ import annotations

from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.experiments.skeleton import Experiment
from nlilab.models.resolve import resolve_model
from nlilab.training import distributed
from nlilab.training.trainer import fit_and_evaluate, remove_checkpoints, resolve_device

# What each process of a multi-process experiment runs (`python -m`); named, not imported: it imports the kinds.
ENTRY = "nlilab.experiments.launched"


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

    def run(self) -> dict:
        """In this process, or (`processes` above 1) in processes launched for it: the same metrics.json."""
        if not distributed.launches(self.config):
            return super().run()
        # Refused here rather than in every process: a GPU-only setting without a GPU, a model that cannot be
        # had. Resolving the model once also converts or downloads it once, not once per process.
        device = resolve_device(self.config)
        resolve_model(self.config["model"], self.config.get("revision"))
        return distributed.launch(self.config, ENTRY, device)

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
        return {"method_notes": method_notes(metrics["runs"]), "launch": distributed.launch_record(self.config)}
