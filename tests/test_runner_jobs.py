"""How many experiments run at once (`--jobs`), and what a worker that dies leaves behind. The parallel runs
themselves are exercised end to end by the tiny profile (tests/conftest.py) and the isolation test."""

from __future__ import annotations

import pytest

from nlilab import cli
from nlilab.errors import NlilabError
from nlilab.results import read_json
from nlilab.run import cache, workers


def _config(kind="encoder", device="cpu", **extra):
    return {"name": f"{kind}_x", "kind": kind, "device": device, **extra}


@pytest.fixture
def machine(monkeypatch):
    """A CPU machine of a given size."""
    def make(cores, memory_gb=64.0):
        monkeypatch.setattr(workers, "_cpu_count", lambda: cores)
        monkeypatch.setattr(workers, "_memory_gb", lambda: memory_gb)
    return make


@pytest.mark.parametrize("cores, memory_gb, pending, expected", [
    (2, 24, 10, 2),   # this machine: one per core
    (16, 128, 10, 4),  # capped
    (16, 11, 10, 1),  # memory for one QLoRA at a time only
    (8, 64, 3, 3),    # never more than there is work
    (1, 8, 10, 1),
])
def test_auto_jobs_follow_cores_memory_and_work(machine, cores, memory_gb, pending, expected):
    machine(cores, memory_gb)
    assert workers.resolve_jobs("auto", [_config()] * pending) == expected


def test_auto_jobs_is_one_when_an_experiment_uses_the_only_gpu(machine, monkeypatch):
    """One GPU: one experiment at a time (more GPUs: tests/test_runner_gpus.py)."""
    import torch

    machine(16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(workers, "_gpu_count", lambda: 1)
    assert workers.resolve_jobs("auto", [_config(), _config(device="auto")]) == 1  # auto resolves to the GPU
    assert workers.resolve_jobs("auto", [_config(), _config(device="cuda")]) == 1
    assert workers.resolve_jobs("auto", [_config(kind="data", device="cuda")] * 3) == 3  # data never uses it


def test_explicit_jobs_are_capped_by_the_work_and_checked(machine):
    machine(2)
    assert workers.resolve_jobs(8, [_config()] * 3) == 3
    assert workers.resolve_jobs(1, [_config()] * 3) == 1
    assert workers.resolve_jobs(0, []) == 1  # nothing to run: nothing to check either
    for bad in (0, -2, "two", 1.5, True):
        with pytest.raises(NlilabError, match="jobs must be a positive whole number"):
            workers.resolve_jobs(bad, [_config()])


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_command_line_refuses_bad_jobs(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--profile", "tiny", "--jobs", value])
    assert exit_info.value.code == 2
    assert "--jobs: expected a positive whole number or 'auto'" in capsys.readouterr().err


def test_a_dead_worker_is_recorded_as_a_failure(tmp_path):
    config = {"name": "lora", "notebook": "12_lora", "output_dir": str(tmp_path / "lora"), "profile": "p",
              "reports_dir": str(tmp_path / "reports")}
    (tmp_path / "lora").mkdir()
    outcome = workers._died(config, -9, 12.0)
    assert outcome.status == "failed" and "killed by signal 9" in outcome.error
    assert read_json(tmp_path / "lora" / "failure.json")["error"] == outcome.error
    assert str(workers.log_path(config)) in outcome.error


def test_longest_expected_experiment_starts_first(tmp_path):
    def config(name, kind, seconds=None, seeds=None):
        out = tmp_path / name
        out.mkdir()
        if seconds:
            (out / cache.CACHE_FILE).write_text(f'{{"key": "k", "seconds": {seconds}}}')
        return {"name": name, "kind": kind, "output_dir": str(out), "seeds": seeds}

    configs = [config("data", "data"), config("ft", "encoder", seeds=[0, 1, 2]), config("q", "qlora"),
               config("zs", "prompting", seconds=500.0)]
    assert [c["name"] for c in sorted(configs, key=workers._expected_seconds, reverse=True)] == ["zs", "q", "ft", "data"]
