"""Crash and resume with a real SIGKILL (issue 7, item 5), and the disk a finished run leaves (item 8).

`nlilab run` starts in its own session; as soon as the Trainer has written its first complete checkpoint,
the runner and the notebook's kernel (papermill starts it in a session of its own) are SIGKILLed together, as
a preempted machine would. The rerun must resume from that checkpoint, finish, and not rerun the experiment
that had finished before the kill; no metrics.json is ever seen half-written and no temporary file stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import make_profile, snapshot, stray_tmp_files  # noqa: E402

from nlilab.results import dir_size_bytes, read_json  # noqa: E402

pytestmark = pytest.mark.slow  # three runs of the CLI, two of them with notebooks

MAX_STEPS = 6  # the Trainer saves (and evaluates) every MAX_STEPS // 2 steps: checkpoint-3, then checkpoint-6
SAVE_STEP = MAX_STEPS // 2


def _profile(tmp_path):
    def edit(raw):
        ff = raw["experiments"]["full_finetune"]
        ff["train"].update(max_steps=MAX_STEPS, save_total_limit=1)
        ff["keep_models"] = "none"  # bound the disk: the run keeps its scores, not the 90 MB model

    snapshot(tmp_path)  # the three runs see one version of the source; they run in tmp_path
    return make_profile(tmp_path, edit=edit)


def _command(path):
    return [sys.executable, "-m", "nlilab", "run", "--profile", str(path)]


# One intra-op thread in the kernels: where other processes share the 2 cores, two OpenMP threads waiting on each
# other were measured 5x slower per step. The kernels inherit the runner's environment.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def _check_metrics_files(results: Path):
    """Every metrics.json that exists at any moment parses: written whole or not at all."""
    for path in results.rglob("metrics.json"):
        json.loads(path.read_text())


def _kill_tree(proc: subprocess.Popen, times: dict):
    """SIGKILL the runner's process group and every descendant (the kernel runs in its own session)."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    times["SIGKILL sent"] = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    return len(tree)


def test_sigkill_mid_training_then_resume(tmp_path):
    path = _profile(tmp_path)
    results = tmp_path / "results" / "rel"
    ckpt_dir = results / "full_finetune" / "seed_0" / "checkpoints"
    log = tmp_path / "run1.log"
    times = {"start": time.monotonic()}
    most_checkpoints = 0
    with open(log, "w") as handle:
        proc = subprocess.Popen(_command(path), cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, env=ENV)
        try:
            while True:
                assert proc.poll() is None, "the run ended before a checkpoint was seen:\n" + log.read_text()[-3000:]
                assert time.monotonic() - times["start"] < 400, "no checkpoint after 400 s"
                checkpoints = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()]
                most_checkpoints = max(most_checkpoints, len(checkpoints))
                if results.is_dir():
                    _check_metrics_files(results)
                if any(_complete(p) for p in checkpoints):
                    times["checkpoint seen"] = time.monotonic()
                    break
                time.sleep(0.05)
        finally:
            processes = _kill_tree(proc, times) if proc.poll() is None else 0
    times["all processes gone"] = time.monotonic()
    seen = sorted(p.name for p in ckpt_dir.glob("checkpoint-*"))
    assert f"checkpoint-{SAVE_STEP}" in seen, seen
    state = json.loads((ckpt_dir / f"checkpoint-{SAVE_STEP}" / "trainer_state.json").read_text())
    losses_before_kill = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert read_json(results / "data" / "metrics.json")["status"] == "ok"  # finished before the kill
    assert not (results / "full_finetune" / "metrics.json").exists()
    assert not (results / "full_finetune" / "cache_key.json").exists()
    _check_metrics_files(results)
    # What a kill *during* the next save would leave: a checkpoint folder without its trainer_state.json.
    torn = ckpt_dir / f"checkpoint-{MAX_STEPS}"
    if not torn.exists():
        torn.mkdir()
        (torn / "model.safetensors").write_bytes(b"\0" * 1024)

    times["rerun started"] = time.monotonic()
    rerun = subprocess.run(_command(path), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**ENV, "TRANSFORMERS_VERBOSITY": "info"})
    times["rerun finished"] = time.monotonic()
    output = rerun.stdout + rerun.stderr
    (tmp_path / "run2.log").write_text(output)
    assert rerun.returncode == 0, output[-3000:]
    assert "done: data: skipped, full_finetune: ran" in rerun.stdout
    assert f"Resuming training from checkpoint with epoch" in output and f"global step {SAVE_STEP}" in output, \
        "the Trainer did not log a resume"
    metrics = read_json(results / "full_finetune" / "metrics.json")
    run = metrics["runs"][0]
    assert metrics["status"] == "ok" and run["resumed_from"] == f"checkpoint-{SAVE_STEP}"
    assert [s["step"] for s in run["step_losses"]] == list(range(1, MAX_STEPS + 1))
    assert [s["loss"] for s in run["step_losses"]][:SAVE_STEP] == losses_before_kill  # history carried over
    assert not ckpt_dir.exists(), "checkpoints stay after the seed finished"
    assert not (results / "full_finetune" / "seed_0" / "model").exists()  # keep_models: none

    times["third run started"] = time.monotonic()
    third = subprocess.run(_command(path), cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    times["third run finished"] = time.monotonic()
    assert third.returncode == 0, third.stderr[-2000:]
    assert "done: data: skipped, full_finetune: skipped" in third.stdout
    assert stray_tmp_files(tmp_path) == []
    _check_metrics_files(results)

    size = dir_size_bytes(results)
    timeline = "\n".join(f"  {t - times['start']:7.1f} s  {name}" for name, t in times.items())
    print(f"\nkill-and-resume timeline (SIGKILL sent to {processes + 1} processes; at most "
          f"{most_checkpoints} checkpoint folder(s) seen at once):\n{timeline}\n"
          f"  results/rel left on disk: {size / 1e3:.0f} kB "
          f"(data {dir_size_bytes(results / 'data') / 1e3:.0f} kB, "
          f"full_finetune {dir_size_bytes(results / 'full_finetune') / 1e3:.0f} kB)")
    assert most_checkpoints <= 2  # save_total_limit 1, plus the new one while the old is being deleted
    assert size < 2e6, f"{size} bytes left behind"
