"""One experiment trained by two processes (`processes: 2`): `accelerate launch` starts two gloo ranks on this CPU
machine, both finish, rank 0 alone writes the results, every test row is scored exactly once and in its place, and
metrics.json has the shape of a one-process run's (the session's tiny run). Then the setting's validation, from the
profile and from the command line."""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from nlilab import EVAL_SPLITS
from nlilab.data.nli import HELD_OUT
from nlilab.errors import NlilabError, ParamsError
from nlilab.params import PROJECT_ROOT, deep_merge, load_profile, with_output_dirs, with_processes
from nlilab.training import distributed
from nlilab.training.costs import LOCK_ENV

ROWS = 7  # test rows per split: odd, so that the two processes' shards are uneven
WATCH_ENV = "NLILAB_TEST_WRITES"
# Imported by every Python process started with the hook folder on PYTHONPATH: in a rank, it records each file the
# rank opens for writing under the results folder, and at a normal exit, that the rank finished.
SITECUSTOMIZE = """
import atexit, os, sys
if os.environ.get("NLILAB_LAUNCH_ID") and os.environ.get("{watch}"):
    _root = os.environ["{watch}_UNDER"]
    _log = open(os.path.join(os.environ["{watch}"], "rank%s.txt" % os.environ.get("RANK", "?")), "a")
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event != "open" or isinstance(args[0], (int, bytes)):
            return
        path, mode, flags = os.fspath(args[0]), args[1], args[2]
        if path.startswith(_root) and ((mode and any(c in mode for c in "wax+")) or (not mode and flags & _WRITE)):
            _log.write(path + "\\n")
            _log.flush()

    sys.addaudithook(_hook)
    atexit.register(lambda: (_log.write("finished\\n"), _log.flush()))
""".format(watch=WATCH_ENV)


@pytest.fixture
def watched(tmp_path, monkeypatch) -> Path:
    """The ranks' writes recorded under the returned folder (rank0.txt, rank1.txt). The timing lock is this test's
    own: the windows of other nlilab processes on the machine would otherwise pause these ranks."""
    hooks, writes = tmp_path / "hooks", tmp_path / "writes"
    hooks.mkdir()
    writes.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(WATCH_ENV, str(writes))
    monkeypatch.setenv(f"{WATCH_ENV}_UNDER", str(tmp_path / "results"))
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "locks"))
    return writes


def two_process_config(name: str, tmp_path: Path) -> dict:
    """The tiny profile's experiment on fewer rows: one optimizer step of 8 rows (4 a process), a one-step timing
    window (so that metrics.json has every block the tiny run's has), test batches of 2."""
    config = with_output_dirs(load_profile("tiny"), name, tmp_path / "results", tmp_path / "reports")
    return deep_merge(with_processes(config, 2), {
        "data": {"train_limit": 16, "eval_limit": ROWS},
        "train": {"max_steps": 1, "batch_size": 8, "eval_batch_size": 2, "window_steps": 1}})


OPAQUE = ("per_genre", "parameters")  # mappings whose keys are the data's genres, or the experiment's config


def shape(value, key: str = ""):
    """The nested keys of a metrics dict (a list by its first item), but for the OPAQUE mappings' own keys."""
    if isinstance(value, dict):
        return "mapping" if key in OPAQUE else {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [shape(value[0])]
    return None


def assert_launched_and_written_by_rank_0(metrics: dict, config: dict, writes: Path) -> None:
    assert metrics["launch"]["processes"] == 2 and metrics["launch"]["backend"] == "gloo"
    assert metrics["launch"]["machines"] == 1
    ranks = {n: (writes / f"rank{n}.txt").read_text().splitlines() for n in (0, 1)}
    assert all(lines and lines[-1] == "finished" for lines in ranks.values()), ranks  # both ended normally
    # Rank 1 writes nothing of the results; the Trainer's checkpoints hold each rank's random state (to resume).
    assert all("/checkpoints/" in path for path in ranks[1][:-1]), ranks[1]
    assert any(Path(path).name.startswith(".metrics.json.") for path in ranks[0]), ranks[0]
    out = Path(config["output_dir"])
    top = {rel for p in out.rglob("*") if "/model/" not in (rel := p.relative_to(out).as_posix())}
    assert top == {"metrics.json", "launch.log", "seed_0", "seed_0/run.json", "seed_0/model"}, top


def assert_every_row_scored_once(metrics: dict, config: dict) -> dict:
    """Each split's predictions name each row of the split once; returns the seed's run."""
    from nlilab.data.nli import load_nli

    data = load_nli(config["data"], seed=config["seed"])
    (run,) = metrics["runs"]
    for split in (HELD_OUT, *EVAL_SPLITS):
        ids = [str(i) for i in data[split]["pairID"]]
        assert run[split]["pair_ids"] == ids and len(run[split]["predictions"]) == len(ids)
        assert set(collections.Counter(run[split]["pair_ids"]).values()) == {1}
    assert {len(data[split]) for split in EVAL_SPLITS} == {ROWS}
    return run


def one_process_metrics(tiny_run, name: str) -> dict:
    return json.loads((tiny_run.results_dir / "tiny" / name / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_train_lora_and_score_each_row_once_in_place(watched, tiny_run, tmp_path):
    from nlilab.experiments import encoder
    from nlilab.methods import encoder as methods
    from nlilab.training.trainer import build_trainer, predict_rows

    config = two_process_config("lora", tmp_path)
    metrics = encoder.run(config)
    assert_launched_and_written_by_rank_0(metrics, config, watched)
    run = assert_every_row_scored_once(metrics, config)
    single = one_process_metrics(tiny_run, "lora")
    assert single["launch"]["processes"] == 1 and shape(metrics) == shape(single)
    # In place: the saved model, scored again here in one process, predicts what the two processes gathered.
    data, resolved, tokenizer, tokenized = encoder.prepare(config)
    model = methods.reload(config, resolved.path, Path(config["output_dir"]) / "seed_0" / "model")
    trainer = build_trainer(model, tokenizer, tokenized, config, 0, tmp_path / "rescored")
    for split in EVAL_SPLITS:
        alone = np.argmax(predict_rows(trainer, tokenized[split], split), axis=-1)
        assert run[split]["predictions"] == alone.tolist(), split


@pytest.mark.slow
def test_two_processes_train_the_qlora_classifier(watched, tiny_run, tmp_path):
    from nlilab.experiments import qlora

    config = two_process_config("qlora", tmp_path)
    metrics = qlora.run(config)
    assert_launched_and_written_by_rank_0(metrics, config, watched)
    assert_every_row_scored_once(metrics, config)
    single = one_process_metrics(tiny_run, "qlora")
    assert shape(metrics) == shape(single)
    assert metrics["quantization"] == single["quantization"]  # each rank quantized its own copy alike


def test_a_failing_process_is_an_error_naming_the_experiment_and_the_log(tmp_path, monkeypatch):
    config = two_process_config("lora", tmp_path)
    # a launch whose processes fail at once: the entry point is not a module
    monkeypatch.setattr(distributed, "launch_command",
                        lambda config, entry, file: [sys.executable, "-c", "print('rank 0 broke'); exit(3)"])
    with pytest.raises(NlilabError) as caught:
        distributed.launch(config, "unused", "cpu")
    message = str(caught.value)
    assert "experiment 'lora'" in message and "exit status 3" in message and "rank 0 broke" in message
    assert str(Path(config["output_dir"]) / distributed.LAUNCH_LOG) in message
    assert not list(Path(config["output_dir"]).glob(".launch-*.json"))  # the config file handed over is gone


def test_predictions_not_gathered_one_per_row_are_refused():
    from datasets import Dataset

    from nlilab.training.trainer import predict_rows

    class Gathered:  # what a predict would return had it kept the padding rows of the last shard
        def predict(self, dataset):
            rows = np.array([*range(len(dataset)), 0])
            return SimpleNamespace(predictions=np.zeros((len(rows), 3)), label_ids=rows)

    with pytest.raises(NlilabError, match="8 predictions came back for 7 rows .*1 scored more than once"):
        predict_rows(Gathered(), Dataset.from_dict({"input_ids": [[1]] * ROWS}), "validation_matched")


def test_launch_settings_pass_through_to_accelerate(tmp_path):
    config = deep_merge(two_process_config("lora", tmp_path), {"processes": 4, "launch": {
        "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1", "main_process_port": 29500,
        "extra_args": ["--rdzv_backend", "c10d"]}})
    command = distributed.launch_command(config, "nlilab.experiments.launched", tmp_path / "c.json")
    text = " ".join(command)
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    for flag in ("--num_processes 4", "--num_machines 2", "--machine_rank 1", "--main_process_ip 10.0.0.1",
                 "--main_process_port 29500", "--rdzv_backend c10d"):
        assert flag in text, flag
    assert command[-3:] == ["-m", "nlilab.experiments.launched", str(tmp_path / "c.json")]


# ------------------------------------------------------------------------------------------------ validation
def write_profile(tmp_path: Path, shared: dict, experiments: dict) -> Path:
    folder = tmp_path / "params"
    folder.mkdir(exist_ok=True)
    path = folder / "p.yaml"
    shared = {"notebooks_dir": str(PROJECT_ROOT / "notebooks"), "data": {"source": "bundled"}, **shared}
    path.write_text(yaml.safe_dump({"shared": shared, "experiments": experiments}))
    return path


LORA = {"notebook": "12_lora", "model": "minilm", "method": "lora", "train": {"batch_size": 16}}


@pytest.mark.parametrize("shared, experiment, message", [
    ({"processes": 0}, {}, "shared.processes: expected an integer >= 1, got 0"),
    ({}, {"processes": 3}, "experiments.lora.train.batch_size: expected a multiple of processes (3)"),
    ({"processes": 2, "launch": {"num_machines": 2}}, {},
     "experiments.lora.launch.main_process_ip: 2 machines meet at machine 0: set it"),
    ({"processes": 3, "launch": {"num_machines": 2, "main_process_ip": "h", "main_process_port": 1}}, {},
     "shared.processes: expected a multiple of launch.num_machines (2)"),
    ({}, {"launch": {"num_machine": 2}}, "experiments.lora.launch.num_machine: unknown key (did you mean "
                                         "'num_machines'?)"),
])
def test_bad_process_settings_are_named(tmp_path, shared, experiment, message):
    with pytest.raises(ParamsError) as caught:
        load_profile(write_profile(tmp_path, shared, {"lora": {**LORA, **experiment}}))
    assert message in str(caught.value)


def test_only_the_kinds_that_train_take_processes(tmp_path):
    prompting = {"notebook": "20_prompting", "model": "smollm2", "mode": "zero_shot"}
    prof = load_profile(write_profile(tmp_path, {"processes": 2}, {"lora": LORA, "zero_shot": prompting}))
    assert prof.experiments["lora"]["processes"] == 2 and "processes" not in prof.experiments["zero_shot"]
    with pytest.raises(ParamsError, match="experiments.zero_shot.processes: a prompting experiment runs in one "
                                          "process"):
        load_profile(write_profile(tmp_path, {}, {"zero_shot": {**prompting, "processes": 2}}))


def test_the_command_line_sets_processes_and_refuses_bad_ones(tmp_path, capsys):
    from nlilab.cli import main, parser
    from nlilab.params import with_processes

    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--processes", "0"])
    assert "--processes: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    config = with_processes(load_profile("tiny").experiments["lora"], 2, machine_rank=0)
    assert config["processes"] == 2
    assert main(["run", "--profile", "tiny", "--processes", "3", "--results-dir", str(tmp_path)]) == 2
    assert "experiments.full_finetune.train.batch_size: expected a multiple of processes (3)" in \
        capsys.readouterr().err
