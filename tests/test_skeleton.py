"""The experiment skeleton (nlilab.experiments.skeleton): every kind resumes through the same loop, a finished
seed's run.json is read back and never run again, and the driver writes the shared records. No model is loaded:
the kinds' seeds are stood in for where a seed would run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nlilab import EVAL_SPLITS
from nlilab.data.nli import HELD_OUT, load_nli
from nlilab.evaluation.metrics import score
from nlilab.experiments import encoder, prompting, qlora, skeleton

BUNDLED = {"source": "bundled", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "train_limit": 60,
           "eval_limit": 6, "validation_size": 6}
KINDS = {"encoder": (encoder.Encoder, {}), "qlora": (qlora.QLoRA, {}),
         "prompting": (prompting.Prompting, {"mode": "one_shot"})}


def _seed_result(data, seed: int, splits=(HELD_OUT, *EVAL_SPLITS)) -> dict:
    """A seed's result as a kind writes it: every split it scores, predicting one label throughout."""
    run = {"seed": seed, "cpu_rss_peak_mb": 100.0 + seed}
    for split in splits:
        labels = data[split]["label"]
        run[split] = score(labels, [seed % 3] * len(labels), data[split]["genre"], data[split]["pairID"])
    return run


@pytest.fixture(scope="module")
def data():
    return load_nli(BUNDLED, seed=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_finished_seeds_are_read_back_not_run_again(tmp_path, kind):
    cls, extra = KINDS[kind]
    experiment = cls({"seed": 0, "seeds": [0, 1, 2], **extra})
    finished = {"seed": 0, "marker": "from run.json"}
    skeleton.write_run(tmp_path / "seed_0", finished)
    (tmp_path / "seed_0" / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # killed just after run.json
    (tmp_path / "seed_1" / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # killed mid-training
    calls = []

    def run_seed(seed, run_dir, index):
        calls.append((seed, index))
        assert not (Path(run_dir) / skeleton.RUN_FILE).exists()
        return {"seed": seed, "marker": "ran"}

    experiment.run_seed = run_seed
    runs = experiment.run_seeds(tmp_path)
    assert runs[0] == finished and [r["marker"] for r in runs[1:]] == ["ran", "ran"]
    assert calls == [(1, 1), (2, 2)], "a finished seed ran again, or the index is not the seed's place"
    assert skeleton.read_run(tmp_path / "seed_2") == {"seed": 2, "marker": "ran"}
    assert not list(tmp_path.rglob("*.tmp")), "run.json is written atomically: no temporary file stays"
    # the trained kinds' checkpoints serve only until run.json exists; prompting has none to remove
    leftover = {p.parent.name for p in tmp_path.glob("seed_*/checkpoints")}
    assert leftover == (set() if kind != "prompting" else {"seed_0", "seed_1"})

    calls.clear()
    assert experiment.run_seeds(tmp_path) == runs and calls == [], "a rerun must read every seed back"


def test_a_sweep_value_resumes_from_its_finished_seeds(tmp_path, data):
    """The encoder's sweep trains each value through the same loop: finished seeds build no model."""
    config = {"seed": 0, "seeds": [0, 1], "method": "lora"}
    out = tmp_path / encoder.sweep_dir_name(1e-3)
    for seed in (0, 1):
        skeleton.write_run(out / f"seed_{seed}", {**_seed_result(data, seed), "learning_rate": 1e-3})
    runs = encoder.train_seeds(config, (data, None, None, None), out, 1e-3)  # no tokenizer: nothing can train
    assert [r["seed"] for r in runs] == [0, 1] and {r["learning_rate"] for r in runs} == {1e-3}


def test_zero_shot_prompting_runs_one_seed_whatever_the_seeds():
    assert prompting.Prompting({"mode": "zero_shot", "seed": 3, "seeds": [0, 1]}).seeds() == [3]
    assert prompting.Prompting({"mode": "one_shot", "seed": 3, "seeds": [0, 1]}).seeds() == [0, 1]


class Toy(skeleton.Experiment):
    """The smallest kind: it scores the test splits with a constant prediction."""

    def __init__(self, config, data):
        super().__init__(config)
        self.loaded, self.ran = data, []

    def prepare(self):
        self.data = self.loaded
        self.resolved = SimpleNamespace(path="/models/toy", provenance={"source": "test"})

    def run_seed(self, seed, run_dir, index):
        self.ran.append(seed)
        return _seed_result(self.data, seed, EVAL_SPLITS)

    def method(self):
        return "toy"

    def label(self, metrics):
        return f"constant over {len(metrics['seeds'])} seeds"


def test_the_driver_writes_the_shared_records_and_resumes(tmp_path, data):
    config = {"name": "toy", "profile": "test", "kind": "toy", "model": "toy-model", "seed": 0, "seeds": [0, 1],
              "output_dir": str(tmp_path / "toy")}
    metrics = Toy(config, data).run()
    written = json.loads((tmp_path / "toy" / "metrics.json").read_text())
    assert written["method"] == "toy" and written["method_label"] == "constant over 2 seeds"
    assert (written["model"], written["model_path"], written["model_provenance"]) == \
        ("toy-model", "/models/toy", {"source": "test"})
    assert written["data_fingerprint"] == data.fingerprint and written["data_source"] == data.source
    assert written["dropped_unlabeled"] == data.dropped_unlabeled
    assert written["data_sizes"] == {split: len(ds) for split, ds in data.splits.items()}
    assert written["seeds"] == [0, 1] and written["history"] == [] and "selection" not in written
    assert written["cpu_rss_peak_mb"] == 101.0, "a peak over seeds is the largest seed's peak"
    assert written["run_record"]["data_fingerprint"] == data.fingerprint
    assert metrics["validation_matched"] == written["validation_matched"]

    again = Toy(config, data)
    assert again.run()["runs"] == metrics["runs"] and again.ran == [], "finished seeds were run again"
