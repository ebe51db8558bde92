"""Several experiments on the GPUs of one machine (issue 14, part 2): `--jobs auto` is one per visible GPU, and
each worker gets a GPU of its own through CUDA_VISIBLE_DEVICES. There are no GPUs here: the tests stand in a GPU
count (workers._gpu_count) and a CUDA that says it is available; the workers are real spawned processes, with a
stand-in for the notebook that records what its kernel would inherit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runner"))
import stand_in_worker  # noqa: E402

from nlilab.run import workers  # noqa: E402


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `count` GPUs (16 cores, 128 GB), as far as the runner can tell."""
    import torch

    def make(count, visible=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(workers, "_gpu_count", lambda: count)
        monkeypatch.setattr(workers, "_cpu_count", lambda: 16)
        monkeypatch.setattr(workers, "_memory_gb", lambda: 128.0)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return make


def _config(tmp_path, name, kind="encoder", device="cuda", sleep=0.5):
    return {"name": name, "kind": kind, "device": device, "notebook": "stand_in", "profile": "p",
            "output_dir": str(tmp_path / "results" / "p" / name), "reports_dir": str(tmp_path / "reports"),
            "sleep": sleep}


@pytest.mark.parametrize("count, pending, expected", [
    (8, 10, 8),  # one per GPU
    (8, 3, 3),  # never more than there is work
    (1, 10, 1),  # one GPU: one at a time, as before
])
def test_auto_jobs_is_one_per_gpu(tmp_path, gpus, count, pending, expected):
    gpus(count)
    assert workers.resolve_jobs("auto", [_config(tmp_path, f"e{i}") for i in range(pending)]) == expected


def test_cpu_only_experiments_on_a_gpu_machine_follow_the_cpu_rules(tmp_path, gpus):
    gpus(8)
    cpu_only = [_config(tmp_path, f"c{i}", device="cpu") for i in range(10)]
    assert workers.resolve_jobs("auto", cpu_only) == workers.MAX_AUTO_JOBS
    data = [_config(tmp_path, f"d{i}", kind="data", device="cuda") for i in range(10)]  # data never uses it
    assert workers.resolve_jobs("auto", data) == workers.MAX_AUTO_JOBS
    # beside GPU experiments they count as work, and take a slot but no GPU (test below)
    assert workers.resolve_jobs("auto", cpu_only[:1] + [_config(tmp_path, "g")]) == 2


def test_visible_devices_are_named_as_the_runner_sees_them(gpus):
    gpus(3, visible="4,6, 7")
    assert workers.gpu_devices() == ["4", "6", "7"]
    gpus(2, visible="GPU-aaa,GPU-bbb,GPU-ccc")  # CUDA took only the first two
    assert workers.gpu_devices() == ["GPU-aaa", "GPU-bbb"]
    gpus(2)
    assert workers.gpu_devices() == ["0", "1"]


def test_pick_gpu_prefers_a_free_one_then_the_least_shared():
    devices = ["0", "1", "2"]
    assert workers.pick_gpu(devices, []) == "0"
    assert workers.pick_gpu(devices, ["0", ""]) == "1"  # "" is a CPU-only worker: it holds no GPU
    assert workers.pick_gpu(devices, ["1", "2"]) == "0"  # the one a finished worker gave back
    assert workers.pick_gpu(devices, ["0", "1", "2", "0"]) == "1"  # --jobs beyond the GPUs: shared, evenly


def test_each_worker_gets_its_own_gpu(tmp_path, gpus, monkeypatch):
    """8 GPUs, 9 GPU experiments and a data experiment pending: 8 at once; no two experiments that ran at the
    same time saw the same GPU; a GPU freed by a finished worker went to a later experiment; the data
    experiment saw none; CUDA_VISIBLE_DEVICES was set before anything imported torch in the worker."""
    gpus(8)
    monkeypatch.setattr(workers, "_child", stand_in_worker.child)
    monkeypatch.setattr(workers, "cache_key", lambda config: {"key": config["name"]})
    # a spread of durations, so that workers finish one by one while others still run
    configs = [_config(tmp_path, f"gpu{i}", sleep=1.0 + 0.3 * i) for i in range(9)]
    configs.append(_config(tmp_path, "data", kind="data", sleep=0.5))
    jobs = workers.resolve_jobs("auto", configs)
    assert jobs == 8
    outcomes = workers.run_parallel(configs, configs, jobs, force=False)
    assert [o.status for o in outcomes] == ["ran"] * 10, [o.error for o in outcomes]

    seen = {c["name"]: json.loads((Path(c["output_dir"]) / stand_in_worker.RECORD).read_text()) for c in configs}
    assert not any(s["torch_imported"] for s in seen.values())
    assert len({s["pid"] for s in seen.values()}) == 10  # a fresh process for each
    assert {s["threads"] for s in seen.values()} == {"2"}  # 16 cores // 8 jobs
    assert seen.pop("data")["device"] == ""  # a CPU-only experiment is kept off the GPUs
    devices = [s["device"] for s in seen.values()]
    assert set(devices) == {str(i) for i in range(8)}, devices  # every GPU used, each named alone
    for a, first in seen.items():
        for b, second in seen.items():
            if a < b and first["began"] < second["ended"] and second["began"] < first["ended"]:
                assert first["device"] != second["device"], f"{a} and {b} ran at once on GPU {first['device']}"
    reused = [d for d in set(devices) if devices.count(d) > 1]
    assert reused, "9 GPU experiments on 8 GPUs: one GPU must have gone to a second experiment"
    # the schedule says how many ran at once, as for a CPU run
    schedule = json.loads((Path(configs[0]["output_dir"]) / "schedule.json").read_text())
    assert schedule["jobs"] == 8 and schedule["overlapped_with"]
