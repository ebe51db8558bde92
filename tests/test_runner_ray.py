"""`nlilab run --executor ray` (issue 14, part 3): the experiments as Ray tasks give what the local executor
gives: the same results files, the same cache (a rerun skips), the same failure isolation and report. A local
Ray instance of 2 CPUs stands in for a cluster (started once for this file, without its dashboard, and shut
down at the end); the resources and the shared-storage check, which need a real cluster to matter, are tested
with stand-in nodes."""

from __future__ import annotations

import html
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import make_profile, snapshot, stray_tmp_files, torn_row_profile  # noqa: E402

from nlilab import cli  # noqa: E402
from nlilab.errors import NlilabError  # noqa: E402
from nlilab.results import read_json  # noqa: E402
from nlilab.run import cache, ray_executor  # noqa: E402

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e .[ray] (make test installs it)")


@pytest.fixture(scope="module")
def local_ray():
    # A Ray node's raylet gives its agents a fixed 15 s to start (ray-project/ray#65983, not configurable in
    # ray 2.60); on a machine loaded to several times its cores they can take longer, and the node dies. One
    # more try, then a message that says so rather than Ray's "The current node timed out during startup".
    for attempt in (1, 2):
        try:
            # address="local": a new instance of our own, never one that someone else started on this machine
            ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                     log_to_driver=False)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            ray.shutdown()
            if attempt == 2:
                pytest.fail(f"a local Ray node did not start twice ({exc}); if /tmp/ray/session_latest/logs/"
                            "raylet.out says 'Timed out waiting for file', its agents took over 15 s to start: "
                            "the machine is overloaded (ray-project/ray#65983)")
    try:
        yield ray
    finally:
        ray.shutdown()


def _files(folder: Path) -> dict[str, list[str]]:
    """Each experiment folder's file names (what a results folder holds, whatever ran it)."""
    return {d.name: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
            for d in sorted(folder.iterdir()) if d.is_dir()}


def _run(args: list[str], capsys) -> tuple[int, str, str, float]:
    started = time.monotonic()
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err, time.monotonic() - started


@pytest.mark.slow  # the reliability profile (00_data, 10_full_finetune) twice, then a cached rerun: 1-2 min
def test_ray_gives_what_the_local_executor_gives_then_skips(tmp_path, capsys, monkeypatch, local_ray):
    monkeypatch.setattr(cache, "PACKAGE_DIR", snapshot(tmp_path))
    path = make_profile(tmp_path)
    local_results, ray_results = tmp_path / "local" / "results", tmp_path / "results"
    rc, out, err, local_s = _run(["run", "--profile", str(path), "--results-dir", str(local_results),
                                  "--reports-dir", str(tmp_path / "local" / "reports")], capsys)
    assert rc == 0, err
    rc, out, err, ray_s = _run(["run", "--profile", str(path), "--executor", "ray"], capsys)
    assert rc == 0, err
    assert "done: data: ran, full_finetune: ran" in out
    assert "as Ray tasks on 1 node(s)" in out

    local_files, ray_files = _files(local_results / "rel"), _files(ray_results / "rel")
    assert ray_files == local_files
    for name in ("data", "full_finetune"):
        here, there = read_json(local_results / "rel" / name / "metrics.json"), read_json(ray_results / "rel" / name / "metrics.json")
        assert there["status"] == here["status"] == "ok"
        assert sorted(there) == sorted(here)
        schedule = read_json(ray_results / "rel" / name / "schedule.json")
        assert schedule["executor"] == "ray" and schedule["threads"] == 1
        assert (tmp_path / "reports" / "rel" / "logs" / f"{name}.log").stat().st_size > 0
    accuracy = {where: read_json(folder / "rel" / "full_finetune" / "metrics.json")["validation_matched"]["accuracy"]
                for where, folder in (("local", local_results), ("ray", ray_results))}
    assert (tmp_path / "reports" / "rel" / "index.html").is_file()
    assert not list((ray_results / "rel").glob(ray_executor.MARKER + "*"))  # the run's markers are gone
    assert stray_tmp_files(tmp_path) == []

    before = read_json(ray_results / "rel" / "full_finetune" / "metrics.json")
    rc, out, err, rerun_s = _run(["run", "--profile", str(path), "--executor", "ray"], capsys)
    assert rc == 0, err
    assert "done: data: skipped, full_finetune: skipped" in out
    assert read_json(ray_results / "rel" / "full_finetune" / "metrics.json") == before
    with capsys.disabled():  # for the closing note (pytest -s)
        print(f"\nlocal executor {local_s:.1f} s, ray executor {ray_s:.1f} s, ray rerun (cached) {rerun_s:.1f} s; "
              f"full_finetune accuracy {accuracy}")


@pytest.mark.slow  # three 00_data notebooks, about 10 s each
def test_a_failing_experiment_is_isolated_then_rerun_alone(tmp_path, capsys, monkeypatch, local_ray):
    """As tests/test_reliability_isolation.py, through Ray: the torn row fails its experiment only; the report
    shows it; after the fix exactly that experiment reruns."""
    monkeypatch.setattr(cache, "PACKAGE_DIR", snapshot(tmp_path))
    path, train, good = torn_row_profile(tmp_path)
    results = tmp_path / "results" / "rel"

    rc, out, err, _ = _run(["run", "--profile", str(path), "--executor", "ray"], capsys)
    assert rc == 1
    assert "done: local_data: failed, data: ran" in out
    assert "1 experiment(s) failed: local_data" in err
    error = read_json(results / "local_data" / "failure.json")["error"]
    assert error.startswith(f"DataError: {train}:3: invalid JSON"), error
    assert read_json(results / "data" / "metrics.json")["status"] == "ok"
    page = (tmp_path / "reports" / "rel" / "index.html").read_text(encoding="utf-8")
    assert "FAILED: local_data" in page and html.escape(error) in page

    train.write_bytes(good)
    rc, out, err, _ = _run(["run", "--profile", str(path), "--executor", "ray"], capsys)
    assert rc == 0, err
    assert "done: local_data: ran, data: skipped" in out
    assert not (results / "local_data" / "failure.json").exists()
    assert "FAILED" not in (tmp_path / "reports" / "rel" / "index.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------- stand-in clusters
GPU_NODE = {"CPU": 96.0, "GPU": 8.0, "memory": 800 * 2**30}
CPU_NODE = {"CPU": 16.0, "memory": 48 * 2**30}


def _config(kind="encoder", device="cuda", name="lora"):
    return {"name": name, "kind": kind, "device": device}


def test_a_gpu_experiment_asks_for_one_gpu_and_its_share_of_the_node():
    # two GPU nodes: the smaller share, so that all eight GPUs of either can be busy at once
    small = {"CPU": 32.0, "GPU": 8.0, "memory": 256 * 2**30}
    assert ray_executor.task_resources(_config(), [GPU_NODE, small, CPU_NODE]) == \
        {"num_gpus": 1, "num_cpus": 4, "memory": 32 * 2**30}
    assert ray_executor.task_resources(_config(device="auto"), [GPU_NODE])["num_gpus"] == 1


def test_cpu_experiments_ask_for_one_cpu_and_no_gpu():
    expected = {"num_gpus": 0, "num_cpus": 1, "memory": 6 * 2**30}
    for config in (_config(device="cpu"), _config(kind="data"), _config(device="auto")):
        assert ray_executor.task_resources(config, [CPU_NODE]) == expected
    assert ray_executor.task_resources(_config(kind="data"), [GPU_NODE])["num_gpus"] == 0
    # a node with less memory than the plan: the experiment still runs there, as locally
    assert ray_executor.task_resources(_config(device="cpu"), [{"CPU": 2.0, "memory": 2**30}])["memory"] == 2**30


def test_experiments_no_node_can_hold_are_refused_before_anything_runs():
    demands = {"lora": ray_executor.task_resources(_config(), [CPU_NODE]),
               "data": ray_executor.task_resources(_config(kind="data"), [CPU_NODE])}
    with pytest.raises(NlilabError, match=r"nothing was run.*\n  experiments lora need 1 GPU"):
        ray_executor.check_feasible(demands, [CPU_NODE], "address auto")
    ray_executor.check_feasible({"data": demands["data"]}, [CPU_NODE], "address auto")


def test_a_node_without_the_shared_folders_fails_its_experiment_with_a_reason(tmp_path):
    config = {"name": "lora", "profile": "p", "output_dir": str(tmp_path / "results" / "p" / "lora"),
              "reports_dir": str(tmp_path / "reports")}
    with pytest.raises(NlilabError, match="must be on storage that every node mounts at the same path"):
        ray_executor._check_shared(config, ray_executor.MARKER + "x")
    for folder in ray_executor._folders(config):
        folder.mkdir(parents=True)
        (folder / (ray_executor.MARKER + "x")).write_text("")
    ray_executor._check_shared(config, ray_executor.MARKER + "x")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert cli.main(["run", "--profile", "tiny", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray" in err and "pip install -e .[ray]" in err


def test_address_goes_with_the_ray_executor(capsys):
    assert cli.main(["run", "--profile", "tiny", "--address", "auto"]) == 2
    assert "--address names a Ray cluster" in capsys.readouterr().err


def test_a_task_error_outside_the_notebook_reads_as_its_message():
    class Wrapped(Exception):
        cause = NlilabError("node n1 does not see the driver's folder /r")

    assert ray_executor._error_text(Wrapped()) == "NlilabError: node n1 does not see the driver's folder /r"
    assert ray_executor._error_text(RuntimeError("a\nb\nworker died")).endswith("b\nworker died")
