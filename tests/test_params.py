"""Profiles validate completely, fill defaults, and name file, key path and expectation on error."""

import textwrap
from pathlib import Path

import pytest

from nlilab.errors import ParamsError
from nlilab.params import PROJECT_ROOT, load_experiment, load_profile, with_output_dirs

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
