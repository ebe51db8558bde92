"""Malformed params files stop `nlilab run` before any notebook starts, with one message naming the file, the
key path and what was expected, and no traceback (issue 7, item 1)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import REPO, make_profile, run_cli, write_mnli  # noqa: E402

from nlilab import cli, params  # noqa: E402
from nlilab.run import execute  # noqa: E402

# (no use of runner)


def _ff(raw):
    return raw["experiments"]["full_finetune"]


def _set(path: str, value):
    """An edit that sets a dotted key path of the profile (creating sections on the way)."""

    def edit(raw):
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _missing_notebooks(raw):
    raw["shared"]["notebooks_dir"] = "no_such_notebooks"


DUPLICATE = """\
shared:
  device: cpu
experiments:
  full_finetune:
    notebook: 10_full_finetune
    model: minilm
  full_finetune:
    notebook: 10_full_finetune
    model: minilm
    train: {learning_rate: 1.0e-5}
"""

SYNTAX = """\
shared:
  device: cpu
experiments:
  data:
    notebook: 00_data
   examples: 2
"""

# (id, edit or raw text, strings the message must contain: the key path and the expectation)
CASES = [
    ("unknown_key", _set("experiments.full_finetune.train.learnig_rate", 1e-4),
     ["experiments.full_finetune.train.learnig_rate: unknown key", "did you mean 'learning_rate'"]),
    ("unknown_top_level_key", _set("shraed", {"seed": 1}),
     ["shraed: unknown top-level key", "did you mean 'shared'", "expected description, shared, experiments"]),
    ("misspelt_notebook", _set("experiments.full_finetune.notebook", "10_full_finetun"),
     ["experiments.full_finetune.notebook: expected one of", "10_full_finetune", "got '10_full_finetun'"]),
    ("wrong_type", _set("experiments.full_finetune.train.batch_size", "sixteen"),
     ["experiments.full_finetune.train.batch_size: expected an integer >= 1, got 'sixteen'"]),
    ("bool_for_number", _set("experiments.full_finetune.train.epochs", True),
     ["experiments.full_finetune.train.epochs: expected a positive number, got True"]),
    ("negative_learning_rate", _set("experiments.full_finetune.train.learning_rate", -0.001),
     ["experiments.full_finetune.train.learning_rate: expected a positive number, got -0.001"]),
    ("warmup_out_of_range", _set("experiments.full_finetune.train.warmup_ratio", 1.5),
     ["experiments.full_finetune.train.warmup_ratio: expected a number in [0, 1], got 1.5"]),
    ("empty_seeds", _set("experiments.full_finetune.seeds", []),
     ["experiments.full_finetune.seeds: expected a non-empty list, each an integer >= 0, got []"]),
    ("duplicate_seeds", _set("experiments.full_finetune.seeds", [0, 0]),
     ["experiments.full_finetune.seeds: expected distinct seeds, got [0, 0]"]),
    ("unknown_model_alias", _set("experiments.full_finetune.model", "minilmm"),
     ["experiments.full_finetune.model: unknown model 'minilmm'", "expected an alias (minilm, smollm2)"]),
    ("missing_model", lambda raw: _ff(raw).pop("model"),
     ["experiments.full_finetune.model: missing; expected a model alias"]),
    ("bad_choice_in_shared", _set("shared.device", "gpu"),
     ["shared.device: expected one of 'auto', 'cpu', 'cuda', got 'gpu'"]),
    ("missing_local_data_folder", _set("shared.data", {"source": "local", "local_dir": "/no/such/mnli"}),
     ["data.local_dir: expected an existing folder, got '/no/such/mnli'"]),
    ("missing_notebook_file", _missing_notebooks,
     ["experiments.data.notebook: notebook file", "no_such_notebooks/00_data.ipynb does not exist"]),
    ("fp16_with_device_cpu", _set("shared.precision", "fp16"),
     ["shared.precision: fp16 needs a GPU but device is 'cpu'; use fp32 or bf16"]),
    ("embeddings_4bit_without_nf4", lambda raw: raw["experiments"].update({"q": {
        "notebook": "21_qlora", "model": "smollm2", "quantization": "none", "quantize_embeddings": True}}),
     ["experiments.q.quantize_embeddings: only with quantization: nf4 (got 'none')"]),
    ("sweep_with_full", _set("experiments.full_finetune.sweep", {"values": [1e-4, 1e-5]}),
     ["experiments.full_finetune.sweep: a learning-rate sweep is only supported for method 'lora'"]),
    ("experiment_name_with_slash", lambda raw: raw["experiments"].update({"../escape": {"notebook": "00_data"}}),
     ["experiments.../escape: expected an experiment name of letters, digits"]),
    ("block_not_a_mapping", _set("experiments.data", "00_data"),
     ["experiments.data: expected a mapping with at least 'notebook', got '00_data'"]),
    ("no_experiments", _set("experiments", {}),
     ["experiments: expected a non-empty mapping of experiment name to block"]),
    ("yaml_syntax_error", SYNTAX, ["line 6, column 4: YAML syntax error"]),
    ("duplicate_key", DUPLICATE, ["line 7, column 3: duplicate key 'full_finetune' (first written on line 4)"]),
    ("not_a_mapping", "- data\n- full_finetune\n", ["expected a mapping with 'shared' and 'experiments'"]),
    # issue 12: each of these was accepted before (or failed only once the run built the model)
    ("description_mapping", _set("description", {"title": "a mapping"}),
     ["description: expected a string, got {'title': 'a mapping'}"]),
    ("encoder_lora_target_not_in_model", lambda raw: raw["experiments"].update({"lora": {
        "notebook": "12_lora", "model": "minilm", "method": "lora", "lora": {"target_modules": ["query", "valu"]}}}),
     ["experiments.lora.lora.target_modules[1]: expected a module of 'minilm' that LoRA can adapt, got 'valu' "
      "(did you mean 'value'?); it has ", "key, ", "query, "]),
    ("qlora_target_not_in_model", lambda raw: raw["experiments"].update({"q": {
        "notebook": "21_qlora", "model": "smollm2", "lora": {"target_modules": ["q_proj", "v_prj"]}}}),
     ["experiments.q.lora.target_modules[1]: expected a module of 'smollm2' that LoRA can adapt, got 'v_prj' "
      "(did you mean 'v_proj'?); it has ", "gate_proj, "]),
    ("validation_size_zero", _set("shared.data.validation_size", 0),
     ["shared.data.validation_size: expected a fraction in (0, 1) or a whole number of rows >= 1, got 0.0"]),
    ("validation_size_part_of_a_row", _set("shared.data.validation_size", 2.5),
     ["shared.data.validation_size: expected a fraction in (0, 1) or a whole number of rows >= 1, got 2.5"]),
    ("revision_of_an_alias", _set("experiments.full_finetune.revision", "main"),
     ["experiments.full_finetune.revision: a revision pins a hub model, but 'minilm' is an embedded alias"]),
    ("data_revision_without_hub", _set("shared.data.revision", "main"),
     ["shared.data.revision: a revision pins a hub dataset, but data.source is 'bundled'; remove it"]),
]


def _assert_one_clean_message(rc: int, err: str, path: Path, expected: list[str]):
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("nlilab: error: ") and err.count("nlilab: error:") == 1, err
    assert str(path) in err, f"the message does not name the file:\n{err}"
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err}"
    assert len(err.strip().splitlines()) <= 4, f"one message or a short list, not a wall:\n{err}"


@pytest.fixture
def no_notebook(monkeypatch):
    """Any notebook start fails the test."""

    def refuse(config):
        raise AssertionError(f"notebook {config['notebook']} started despite a malformed profile")

    monkeypatch.setattr(execute, "execute", refuse)
    monkeypatch.delenv("NLILAB_MNLI_DIR", raising=False)


@pytest.mark.parametrize("edit, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_params_stop_before_any_notebook(tmp_path, capsys, no_notebook, edit, expected):
    path = make_profile(tmp_path, **({"text": edit} if isinstance(edit, str) else {"edit": edit}))
    rc = cli.main(["run", "--profile", str(path)])
    err = capsys.readouterr().err
    print(f"{path.name}: {err.strip()}")  # the message each case got, for the closing note (pytest -s)
    _assert_one_clean_message(rc, err, path, expected)
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_inherited_problem_reported_once(tmp_path, capsys, no_notebook):
    """A bad value written once in `shared` is one message, not one per experiment that inherits it."""
    path = make_profile(tmp_path, edit=_set("shared.seed", -1))
    assert cli.main(["run", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "shared.seed: expected an integer >= 0, got -1" in err, err
    assert "experiments.data.seed" not in err


def test_local_source_without_folder(tmp_path, capsys, no_notebook):
    path = make_profile(tmp_path, edit=_set("shared.data.source", "local"))
    assert cli.main(["run", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    _assert_one_clean_message(2, err, path, ["shared.data.source: 'local' needs a folder: set data.local_dir "
                                             "or $NLILAB_MNLI_DIR; neither is set"])


def test_only_names_unknown_experiment(tmp_path, capsys, no_notebook):
    path = make_profile(tmp_path)
    rc = cli.main(["run", "--profile", str(path), "--only", "full_finetun"])
    _assert_one_clean_message(rc, capsys.readouterr().err, path,
                              ["--only names unknown experiment(s) full_finetun", "data, full_finetune"])


def test_missing_params_file(tmp_path, capsys, no_notebook):
    path = tmp_path / "params" / "nope.yaml"
    rc = cli.main(["run", "--profile", str(path)])
    _assert_one_clean_message(rc, capsys.readouterr().err, path, ["params file not found"])


@pytest.mark.parametrize("case", ["unknown_key", "yaml_syntax_error"])
def test_real_command_line(tmp_path, case):
    """The installed entry point, in its own process: exit 2, one message on stderr, nothing started."""
    _, edit, expected = next(c for c in CASES if c[0] == case)
    path = make_profile(tmp_path, **({"text": edit} if isinstance(edit, str) else {"edit": edit}))
    proc, _ = run_cli(["run", "--profile", str(path)], timeout=120)
    _assert_one_clean_message(proc.returncode, proc.stderr, path, expected)
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------- issue 12
def test_target_modules_the_model_has_pass(tmp_path):
    """The check matches as PEFT does (a dotted suffix counts): these run, so they must validate."""
    path = make_profile(tmp_path, edit=lambda raw: raw["experiments"].update({"lora": {
        "notebook": "12_lora", "model": "minilm", "method": "lora",
        "lora": {"target_modules": ["query", "attention.self.value", "output.dense"]}}}))
    assert params.load_profile(path).experiments["lora"]["lora"]["target_modules"][1] == "attention.self.value"


@pytest.mark.parametrize("written, kept", [(None, 0.1), (0.25, 0.25), (200, 200), ("1.0e2", 100)])
def test_validation_size_is_a_fraction_or_a_row_count(tmp_path, written, kept):
    edit = None if written is None else _set("shared.data.validation_size", written)
    config = params.load_profile(make_profile(tmp_path, edit=edit)).experiments["full_finetune"]
    assert config["data"]["validation_size"] == kept
    assert type(config["data"]["validation_size"]) is type(kept), "a row count stays a whole number"


def test_profile_outside_params_runs_the_project_notebooks(tmp_path):
    """A profile kept anywhere (here beside its data, no notebooks/ folder there) runs nlilab's notebooks;
    the data folder it names relative to itself stays relative to itself."""
    write_mnli(tmp_path / "mine" / "mnli")
    raw = yaml.safe_load((REPO / "tests" / "fixtures" / "reliability" / "base.yaml").read_text())
    raw["shared"]["data"] = {"source": "local", "local_dir": "mnli"}
    path = tmp_path / "mine" / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = params.load_profile(path).experiments["full_finetune"]
    assert config["notebooks_dir"] == str(params.PROJECT_ROOT / "notebooks")
    assert config["data"]["local_dir"] == str(tmp_path / "mine" / "mnli")


def _hub_model(revision):
    def edit(raw):
        _ff(raw)["model"] = "FacebookAI/roberta-large"
        if revision is not None:
            _ff(raw)["revision"] = revision
    return edit


@pytest.mark.parametrize("revision, warned", [(None, True), ("main", True), ("722cf37b1afa9454edce342e7895e588b6ff1d59",
                                                                           False)])
def test_unpinned_hub_model_warns_but_validates(tmp_path, capsys, revision, warned):
    path = make_profile(tmp_path, edit=_hub_model(revision))
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    expected = (f"nlilab: warning: rel.yaml: experiments.full_finetune.revision: model 'FacebookAI/roberta-large' "
                f"is not pinned to a commit (got {revision!r})")
    assert (expected in err) is warned, err
    assert params.load_profile(path).experiments["full_finetune"]["revision"] == revision


def test_paper_profile_pins_its_models_and_data():
    prof = params.load_profile("paper")
    assert prof.warnings == []
    for config in prof.experiments.values():
        assert re.fullmatch(r"[0-9a-f]{40}", config["data"]["revision"])
        if "model" in config:
            assert re.fullmatch(r"[0-9a-f]{40}", config["revision"]), config["name"]
