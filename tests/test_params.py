"""Profiles validate completely, fill defaults, and name file, key path and expectation on error."""

import json
import textwrap
from pathlib import Path

import pytest

from nlilab.errors import ParamsError
from nlilab.params import (
    PROJECT_ROOT,
    load_experiment,
    load_profile,
    validate_block,
    with_output_dirs,
)

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def write_profile(tmp_path: Path, body: str, name: str = "p") -> Path:
    folder = tmp_path / "params"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).replace("NOTEBOOKS", str(NOTEBOOKS)))
    return path


@pytest.mark.parametrize("profile", ["tiny", "cpu", "paper"])
def test_shipped_profiles_validate(profile):
    prof = load_profile(profile)
    assert prof.experiments, profile
    assert all(cfg["notebook"] for cfg in prof.experiments.values())


def test_cpu_mnli_profile_validates_with_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NLILAB_MNLI_DIR", str(tmp_path))
    assert load_profile("cpu-mnli").experiments


def test_defaults_are_filled_and_shared_merges_into_experiments(tmp_path):
    path = write_profile(tmp_path, """
        shared:
          seed: 3
          notebooks_dir: NOTEBOOKS
          data: {source: bundled, train_limit: 10}
        experiments:
          ft:
            notebook: 10_full_finetune
            model: minilm
            data: {eval_limit: 5}
            train: {learning_rate: 5e-5}
    """)
    cfg = load_profile(path).experiments["ft"]
    assert cfg["seed"] == 3 and cfg["kind"] == "encoder" and cfg["method"] == "full"
    assert cfg["data"] == {"source": "bundled", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "revision": None,
                           "validation_size": 0.1, "train_limit": 10, "eval_limit": 5}
    assert cfg["revision"] is None  # an embedded model has no hub revision
    assert cfg["train"]["learning_rate"] == pytest.approx(5e-5)  # YAML reads 5e-5 as text; accepted as a number
    assert cfg["train"]["batch_size"] == 16  # default
    assert Path(cfg["results_dir"]) == tmp_path / "results"  # relative to the folder holding params/


def test_every_problem_is_reported_at_once_with_file_and_key_path(tmp_path):
    path = write_profile(tmp_path, """
        shared:
          sed: 1
          notebooks_dir: NOTEBOOKS
        experiments:
          ft:
            notebook: 10_full_finetune
            model: minilm
            train: {learning_rate: -1, batch_size: "big"}
    """)
    with pytest.raises(ParamsError) as info:
        load_profile(path)
    text = str(info.value)
    assert str(path) in text and "3 problem(s)" in text
    assert "shared.sed: unknown key (did you mean 'seed'?)" in text
    assert "experiments.ft.train.learning_rate: expected a positive number, got -1" in text
    assert "experiments.ft.train.batch_size: expected an integer >= 1, got 'big'" in text


def test_missing_required_key_and_unknown_notebook(tmp_path):
    path = write_profile(tmp_path, """
        shared: {notebooks_dir: NOTEBOOKS}
        experiments:
          ft: {notebook: 10_full_finetune}
          other: {notebook: 99_nothing}
    """)
    with pytest.raises(ParamsError) as info:
        load_profile(path)
    text = str(info.value)
    assert "experiments.ft.model: missing; expected a model alias" in text
    assert "experiments.other.notebook: expected one of 00_data, 10_full_finetune" in text


def test_load_experiment_names_the_missing_experiment():
    with pytest.raises(ParamsError, match="no experiment 'ful_finetune' \\(did you mean 'full_finetune'\\?\\)"):
        load_experiment("tiny", "ful_finetune")


def test_output_dir_is_results_profile_experiment(tmp_path):
    prof = load_profile("tiny")
    cfg = with_output_dirs(prof, "full_finetune", results_dir=tmp_path)
    assert Path(cfg["output_dir"]) == tmp_path / "tiny" / "full_finetune"
    assert cfg["profile"] == "tiny"


# ---------------------------------------------------------------------------------------------- issue 15, part 2
BAD_TRAIN = [  # one thing wrong in `train`, and the one line that must say so
    ("epohcs: 1", ("experiments.ft.train.epohcs: unknown key (did you mean 'epochs'?); expected one of batch_size, "
                   "epochs, eval_batch_size, gradient_accumulation_steps, group_by_length, learning_rate, "
                   "logging_steps, max_length, max_steps, save_total_limit, warmup_ratio, weight_decay, window_steps")),
    ('batch_size: "eight"', "experiments.ft.train.batch_size: expected an integer >= 1, got 'eight'"),
    ("learning_rate: -1", "experiments.ft.train.learning_rate: expected a positive number, got -1.0"),
]


@pytest.mark.parametrize("line, message", BAD_TRAIN, ids=["misspelt_key", "bad_type", "out_of_range"])
def test_bad_file_names_key_path_value_and_suggestion(tmp_path, line, message):
    path = write_profile(tmp_path, f"""
        shared: {{notebooks_dir: NOTEBOOKS}}
        experiments:
          ft:
            notebook: 10_full_finetune
            model: minilm
            train:
              {line}
    """, name="bad")
    with pytest.raises(ParamsError) as info:
        load_profile(path)
    assert str(info.value).splitlines() == [f"{path}: 1 problem(s):", f"  bad.yaml: {message}"]


def test_list_items_and_nested_blocks_are_named_by_full_path(tmp_path):
    path = write_profile(tmp_path, """
        shared: {notebooks_dir: NOTEBOOKS, data: {sorce: hub}}
        experiments:
          ft: {notebook: 12_lora, model: minilm, method: lora, seeds: [0, -1], lora: {target_modules: [query, 3]}}
          zs: {notebook: 20_prompting, model: smollm2, prompt: {label_words: {neutral: [maybe]}}}
    """)
    with pytest.raises(ParamsError) as info:
        load_profile(path)
    text = str(info.value)
    assert "4 problem(s)" in text, text  # the typo in `shared` once, not once per experiment
    assert "shared.data.sorce: unknown key (did you mean 'source'?); expected one of eval_limit, hub_id," in text
    assert "experiments.ft.seeds[1]: expected an integer >= 0, got -1" in text
    assert "experiments.ft.lora.target_modules[1]: expected a string, got 3" in text
    assert "experiments.zs.prompt.label_words.neutral: expected a string, got ['maybe']" in text


def test_a_bad_key_does_not_hide_the_checks_of_the_others(tmp_path):
    """Every problem at once: the checks across keys and files still run on the keys that validated."""
    path = write_profile(tmp_path, """
        shared: {notebooks_dir: no_such_notebooks}
        experiments:
          ft: {notebook: 10_full_finetune, model: minilm, train: {epohcs: 1}, sweep: {values: [1.0e-4]}}
    """)
    with pytest.raises(ParamsError) as info:
        load_profile(path)
    text = str(info.value)
    assert "3 problem(s)" in text, text
    assert "experiments.ft.train.epohcs: unknown key" in text
    assert "experiments.ft.notebook: notebook file" in text and "no_such_notebooks/10_full_finetune.ipynb" in text
    assert "experiments.ft.sweep: a learning-rate sweep is only supported for method 'lora'" in text


SHARED_DEFAULTS = {
    "seed": 0, "device": "auto", "precision": "fp32", "results_dir": "results", "reports_dir": "reports",
    "notebooks_dir": "notebooks",
    "data": {"source": "bundled", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "revision": None,
             "validation_size": 0.1, "train_limit": None, "eval_limit": None},
}
TRAIN_DEFAULTS = {"epochs": 3, "max_steps": None, "batch_size": 16, "eval_batch_size": 64, "learning_rate": 5e-05,
                  "weight_decay": 0.01, "warmup_ratio": 0.06, "max_length": 128, "gradient_accumulation_steps": 1,
                  "logging_steps": 10, "save_total_limit": 1, "group_by_length": True, "window_steps": 12}
KIND_DEFAULTS = {
    "data": {"examples": 5},
    "encoder": {
        "model": "m", "revision": None, "method": "full", "pooling": "auto", "seeds": None, "keep_models": "first",
        "train": TRAIN_DEFAULTS, "top_layers": {"k": 2},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
        "ptuning": {"num_virtual_tokens": 20, "encoder_hidden_size": 128},
        "prefix": {"num_virtual_tokens": 16, "projection": False, "projection_hidden_size": 128}, "sweep": None},
    "prompting": {
        "model": "m", "revision": None, "mode": "zero_shot", "scoring": "loglik",
        "prompt": {"name": "harness_mnli", "version": None, "title": None, "template": None, "system": None,
                   "chat_template": None, "fewshot_separator": None, "hypothesis_period": None,
                   "add_special_tokens": None, "label_words": None},
        "seeds": None, "rotate_demo_labels": True, "calibration": "none", "content_free_inputs": ["N/A"],
        "batch_size": 16, "max_length": 2048, "max_new_tokens": 5, "quantization": "none"},
    "qlora": {
        "model": "m", "revision": None, "adapter": "lora", "quantization": "nf4", "fallback": False,
        "compute_dtype": "bf16", "double_quant": True, "quantize_embeddings": False, "gradient_checkpointing": False,
        "input_template": "Premise: {premise}\nHypothesis: {hypothesis}", "seeds": None, "keep_models": "first",
        "train": TRAIN_DEFAULTS,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "bottleneck": {"size": 64}},
}


@pytest.mark.parametrize("kind", KIND_DEFAULTS)
def test_every_kind_hands_over_the_same_plain_dict(kind):
    """The configs are hashed into cache keys and passed to notebooks: the same keys, defaults and number types
    (an unwritten `epochs` stays 3, a written one is 3.0) as before the schema was a pydantic model."""
    config = validate_block(kind, {} if kind == "data" else {"model": "m"})
    assert json.dumps(config, sort_keys=True) == json.dumps({**SHARED_DEFAULTS, **KIND_DEFAULTS[kind]}, sort_keys=True)


def test_written_numbers_keep_their_types():
    config = validate_block("encoder", {"model": "m", "train": {"epochs": 3, "learning_rate": "1e-4"},
                                        "data": {"validation_size": "2.0e2"}})
    assert type(config["train"]["epochs"]) is float and config["train"]["learning_rate"] == 1e-4
    assert config["data"]["validation_size"] == 200 and type(config["data"]["validation_size"]) is int
