"""Every encoder method of the tiny profile, run through papermill by the shared `tiny_run` fixture (one run of
the profile per test session), writes the full metrics.json, saves only what its reuse needs, and the LoRA
sweep records every point. The generic checks (every experiment ran, the report) live in test_e2e_tiny.py."""

from __future__ import annotations

import json

import pytest

from nlilab import EVAL_SPLITS
from nlilab.evaluation.metrics import COLLAPSE_MARGIN
from nlilab.params import load_profile

pytestmark = pytest.mark.slow

FIELDS = {"experiment", "profile", "kind", "status", "run_record", "method", "method_label", "method_notes",
          "model", "data_fingerprint", "majority_baseline", "collapsed", "history", "trainable_params",
          "total_params", "trainable_share", "train_wall_time_s", "train_samples_per_second", "cpu_rss_peak_mb",
          "disk_size_bytes", "seeds", "runs", *EVAL_SPLITS}
SPLIT_FIELDS = {"n", "accuracy", "accuracy_std", "macro_f1", "confusion", "per_genre", "prediction_distribution"}


def encoder_experiments() -> dict[str, dict]:
    return {n: c for n, c in load_profile("tiny").experiments.items() if c["kind"] == "encoder"}


def metrics_of(tiny_run, name: str) -> dict:
    return json.loads((tiny_run.results_dir / "tiny" / name / "metrics.json").read_text())


def test_tiny_profile_covers_every_method():
    assert {c["method"] for c in encoder_experiments().values()} == {"full", "top_layers", "lora", "ptuning",
                                                                     "prefix"}
    assert any(c.get("sweep") for c in encoder_experiments().values())


@pytest.mark.parametrize("name", list(encoder_experiments()))
def test_metrics_json_has_the_full_field_set(tiny_run, name):
    config = encoder_experiments()[name]
    m = metrics_of(tiny_run, name)
    assert FIELDS <= set(m), sorted(FIELDS - set(m))
    assert m["status"] == "ok" and m["method"] == config["method"] and m["method_label"]
    for split in EVAL_SPLITS:
        assert SPLIT_FIELDS <= set(m[split]), (split, sorted(SPLIT_FIELDS - set(m[split])))
    assert m["history"] and {"epoch", "train_loss", "validation_loss", "accuracy"} <= set(m["history"][0])
    # collapsed: within the margin of the majority class on either test split (recomputed from the scores)
    assert m["collapsed"] == any(m[s]["accuracy"] <= m["majority_baseline"][s]["accuracy"] + COLLAPSE_MARGIN
                                 for s in EVAL_SPLITS)
    notes = m["method_notes"]
    assert 0 < notes["head_params"] <= m["trainable_params"] <= m["total_params"]
    if config["method"] == "full":
        assert m["trainable_share"] == 1.0
    else:
        assert 0 < m["trainable_share"] < 0.2, m["trainable_share"]


def test_only_full_finetuning_saves_a_full_checkpoint(tiny_run):
    sizes = {n: metrics_of(tiny_run, n)["disk_size_bytes"] for n in encoder_experiments()}
    full = sizes.pop("full_finetune")
    assert full > 50e6  # MiniLM's weights
    for name, size in sizes.items():
        assert 0 < size < full / 4, (name, size, full)


def test_lora_trains_and_saves_the_head(tiny_run):
    from safetensors import safe_open

    m = metrics_of(tiny_run, "lora")
    notes = m["method_notes"]
    assert m["trainable_params"] == notes["adapter_params"] + notes["head_params"] and notes["head_params"] == 1155
    with safe_open(str(tiny_run.results_dir / "tiny" / "lora" / "seed_0" / "model" / "adapter_model.safetensors"),
                   "pt") as handle:
        keys = list(handle.keys())
    assert any(k.endswith("classifier.weight") for k in keys) and any("lora_A" in k for k in keys)


def test_sweep_records_every_value_and_takes_the_best(tiny_run):
    config = encoder_experiments()["lora_sweep"]
    m = metrics_of(tiny_run, "lora_sweep")
    points = m["sweep"]["points"]
    assert m["sweep"]["param"] == "learning_rate"
    assert [p["value"] for p in points] == config["sweep"]["values"]
    best = max(points, key=lambda p: p["validation_matched"]["accuracy"])
    assert m["best_value"] == best["value"]
    assert m["validation_matched"]["accuracy"] == best["validation_matched"]["accuracy"]
    assert {r["learning_rate"] for r in m["runs"]} == {best["value"]}
    for p in points:
        assert {"collapsed", "train_wall_time_s", *EVAL_SPLITS} <= set(p)
        run_dir = tiny_run.results_dir / "tiny" / "lora_sweep" / f"lr_{p['value']:g}" / "seed_0"
        assert json.loads((run_dir / "run.json").read_text())["learning_rate"] == p["value"]


def test_held_out_scores_are_the_saved_models(tiny_run, tmp_path):
    """LoRA's held-out predictions come from its evaluation after the last step (not a second pass): the saved
    model, reloaded and scored afresh, predicts the same on every row."""
    import numpy as np

    from nlilab.data.nli import HELD_OUT
    from nlilab.experiments import encoder
    from nlilab.methods import encoder as methods
    from nlilab.training.trainer import build_trainer, predict_rows

    config = encoder_experiments()["lora"]
    (run,) = metrics_of(tiny_run, "lora")["runs"]
    _, resolved, tokenizer, tokenized = encoder.prepare(config)
    model = methods.reload(config, resolved.path, tiny_run.results_dir / "tiny" / "lora" / "seed_0" / "model")
    trainer = build_trainer(model, tokenizer, tokenized, config, 0, tmp_path)
    again = np.argmax(predict_rows(trainer, tokenized[HELD_OUT], HELD_OUT), axis=-1)
    assert run[HELD_OUT]["predictions"] == again.tolist()
