"""nlilab.training.costs: per-seed peaks and CPU time, the cross-process timing lock, timing windows that leave the model
as it was, and the runner's schedule (which experiments overlapped)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from nlilab.results import SCHEDULE, load_results, read_json, write_metrics
from nlilab.run.workers import write_schedules
from nlilab.training import costs

MB = 2**20


@pytest.fixture(autouse=True)
def lock_folder(tmp_path, monkeypatch):
    """Each test its own lock files: a run of the suite beside a real nlilab run must not pause either."""
    monkeypatch.setenv(costs.LOCK_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


# ------------------------------------------------------------------------------------------------ SeedMeter
def _touch(megabytes: int) -> np.ndarray:
    return np.ones(megabytes * MB, dtype=np.uint8)  # ones: every page written, so resident


@pytest.mark.skipif(not costs.reset_peak_rss(), reason="this kernel cannot reset the peak (no /proc clear_refs)")
def test_a_later_seed_does_not_inherit_an_earlier_seeds_peak():
    with costs.SeedMeter() as first:
        block = _touch(300)
        del block
    with costs.SeedMeter() as second:
        block = _touch(20)
        del block
    big, small = first.record(), second.record()
    # The first peak holds the 300 MB block, the second only the 20 MB one: their difference is the 280 MB
    # between them (give or take the allocator's and the interpreter's few MB).
    assert big["peak_rss_mb"] - small["peak_rss_mb"] == pytest.approx(280, abs=25)
    assert "reset at the seed's start" in big["peak_how"]


def _rusage_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_cpu_time_counts_work_not_waiting():
    with costs.SeedMeter() as busy:
        before = _rusage_cpu()
        deadline = time.perf_counter() + 0.4
        while time.perf_counter() < deadline:
            pass
        spun = _rusage_cpu() - before
    with costs.SeedMeter() as idle:
        time.sleep(0.4)
    busy, idle = busy.record(), idle.record()
    assert 0.4 <= busy["wall_s"] < 2 and 0.4 <= idle["wall_s"] < 2  # at least the 0.4 s; more on a busy machine
    # the kernel's own count of the spin (how much of the 0.4 s it got depends on the machine's load)
    assert busy["cpu_s"] == pytest.approx(spun, abs=0.03) and spun > 0.1
    assert idle["cpu_s"] < 0.03


# ------------------------------------------------------------------------------------------------ the lock
HOLDER = """
import sys
from nlilab.training import costs
with (costs.shared_step() if sys.argv[1] == "shared" else costs.exclusive()):
    print("holding", flush=True)
    sys.stdin.readline()
"""


class _OtherProcess:
    """Another process (a plain interpreter: no torch to import) that holds the lock until told to let go."""

    def __init__(self, kind: str, folder):
        import os
        import subprocess
        import sys

        env = {**os.environ, costs.LOCK_ENV: str(folder)}
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout.readline().strip() == "holding", "the other process never took the lock"

    def release(self):
        if self.process.poll() is None:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        self.process.wait(30)


def _acquire_in_thread(cm_factory):
    """Enter a context manager in a thread; returns (entered event, leave event, thread)."""
    import threading

    entered, leave = threading.Event(), threading.Event()

    def body():
        with cm_factory():
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return entered, leave, thread


@pytest.mark.parametrize("held, wanted", [("shared", "exclusive"), ("exclusive", "shared")])
def test_exclusive_and_shared_exclude_each_other_across_processes(lock_folder, held, wanted):
    other = _OtherProcess(held, lock_folder)
    try:
        entered, leave, thread = _acquire_in_thread(costs.exclusive if wanted == "exclusive" else costs.shared_step)
        assert not entered.wait(1.0), f"{wanted} was granted while another process held {held}"
        other.release()
        assert entered.wait(30), f"{wanted} was never granted after the other process let go"
        leave.set()
        thread.join(30)
    finally:
        other.release()


def test_shared_holders_do_not_block_each_other(lock_folder):
    other = _OtherProcess("shared", lock_folder)
    try:
        started = time.perf_counter()
        with costs.shared_step():
            waited = time.perf_counter() - started
        assert waited < 1.0
    finally:
        other.release()


STEPPER = """
import sys, time
from nlilab.training import costs
end = time.perf_counter() + float(sys.argv[1])
first = True
while time.perf_counter() < end:
    with costs.shared_step():
        spin = time.perf_counter() + 0.05
        while time.perf_counter() < spin:
            pass
    if first:
        print("stepping", flush=True)
        first = False
"""


def test_a_window_is_not_starved_by_the_overlapping_steps_of_two_other_processes(lock_folder):
    """Two processes whose steps overlap hold the step lock shared without a break; without the gate a window
    would wait until both stopped (here 8 s)."""
    import subprocess
    import sys

    env = {**os.environ, costs.LOCK_ENV: str(lock_folder)}
    steppers = [subprocess.Popen([sys.executable, "-c", STEPPER, "8"], stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    try:
        assert all(p.stdout.readline().strip() == "stepping" for p in steppers)
        assert all(p.poll() is None for p in steppers)
        with costs.exclusive() as info:
            pass
        assert info["exclusive"] and info["waited_s"] < 2.0
        assert all(p.poll() is None for p in steppers)  # they were still stepping: the window got in between
    finally:
        for p in steppers:
            p.kill()
            p.wait(30)


def test_a_window_gives_up_on_a_lock_held_too_long_and_says_so(lock_folder, monkeypatch):
    monkeypatch.setattr(costs, "EXCLUSIVE_TIMEOUT_S", 0.3)
    other = _OtherProcess("shared", lock_folder)
    try:
        started = time.perf_counter()
        with costs.exclusive() as info:
            pass
        assert info["exclusive"] is False and 0.3 <= info["waited_s"] <= time.perf_counter() - started
        with costs.shared_step():  # and it let go of the gate: steps still go through
            pass
    finally:
        other.release()
    assert "the lock could not be had" in costs.describe(
        {"rows": 8, "warmup": 1, "threads": 1, "exclusive": False}, set(), "eval")


def test_exclusive_sets_and_restores_threads_and_says_how_long_it_waited():
    suite = torch.get_num_threads()  # one, as tests/conftest.py sets it: from two, a restore can be seen
    torch.set_num_threads(2)
    try:
        with costs.exclusive(threads=1) as info:
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(suite)
    assert info["exclusive"] is True and info["threads"] == 1 and info["waited_s"] < 1.0


def test_a_window_inside_the_processes_own_step_does_not_deadlock():
    with costs.shared_step():
        with costs.exclusive() as info:
            assert info["exclusive"]
        with costs.shared_step():  # nested: nothing more to take
            pass


# ------------------------------------------------------------------------------------------------ windows
def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config)


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(5, 20))
        rows.append({"input_ids": rng.integers(1, 100, length).tolist(), "token_type_ids": [0] * length,
                     "attention_mask": [1] * length, "labels": int(rng.integers(0, 3)), "genre": "x"})
    return rows


def _pad(features):
    """Pads each batch to its longest row with 0, as DataCollatorWithPadding does."""
    longest = max(len(f["input_ids"]) for f in features)
    batch = {k: torch.tensor([f[k] + [0] * (longest - len(f[k])) for f in features])
             for k in ("input_ids", "token_type_ids", "attention_mask")}
    batch["labels"] = torch.tensor([f["labels"] for f in features])
    return batch


def _lora(model):
    from peft import LoraConfig, TaskType, get_peft_model

    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                            target_modules=["query", "value"]))


@pytest.mark.parametrize("wrap", [None, _lora], ids=["full", "lora"])
def test_training_window_leaves_the_model_exactly_as_it_was(wrap):
    model = _tiny_bert() if wrap is None else wrap(_tiny_bert())
    model.eval()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    rows = _rows()
    torch.manual_seed(123)
    np.random.seed(123)
    window = costs.training_window(model, _pad, rows, batch_size=4, steps=3, warmup=1, seed=7, learning_rate=0.1)
    # the random states are where they were: the next draws are the ones after seeding
    drawn = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(drawn[0], torch.rand(3)) and np.array_equal(drawn[1], np.random.rand(3))
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    # what it timed: 3 steps of 4 rows; the tokens are the real tokens of the 12 rows it drew with seed 7
    drawn_rows = np.random.default_rng(7).choice(len(rows), size=12, replace=False)
    tokens = sum(len(rows[i]["input_ids"]) for i in drawn_rows)
    assert (window["steps"], window["warmup"], window["batch_size"], window["threads"]) == (3, 1, 4, 1)
    assert window["exclusive"] is True
    assert window["samples_per_second"] == pytest.approx(12 / window["seconds"])
    assert window["tokens_per_second"] == pytest.approx(tokens / window["seconds"])


def test_training_window_does_move_the_weights_while_it_runs(monkeypatch):
    """The restore is what keeps the model: without it the window's steps would have changed the weights."""
    model = _tiny_bert()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = {}
    real_step = costs._train_step

    def step_and_look(model_, *args):
        real_step(model_, *args)
        seen["changed"] = any(not torch.equal(p, before[n]) for n, p in model_.named_parameters())

    monkeypatch.setattr(costs, "_train_step", step_and_look)
    costs.training_window(model, _pad, _rows(), batch_size=4, steps=2, warmup=0, learning_rate=0.1)
    assert seen["changed"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_scoring_window_times_the_rows_it_was_given():
    scored = []

    def score(items):
        scored.append(list(items))
        time.sleep(0.01 * len(items))

    window = costs.scoring_window(score, list(range(100)), rows=20, warmup=3)
    assert scored == [list(range(3)), list(range(20))]
    assert window["rows"] == 20 and window["threads"] == 1 and window["exclusive"]
    assert window["examples_per_second"] == pytest.approx(20 / window["seconds"])
    assert window["seconds"] >= 0.2


def test_cost_summary_takes_the_worst_seeds_peak_and_the_mean_times():
    seeds = [{"wall_s": 10.0, "cpu_s": 18.0, "peak_rss_mb": 900.0, "gpu_peak_mb": None, "peak_how": "VmHWM x"},
             {"wall_s": 14.0, "cpu_s": 22.0, "peak_rss_mb": 700.0, "gpu_peak_mb": None, "peak_how": "VmHWM x"}]
    window = {"samples_per_second": 50.0, "steps": 12, "warmup": 3, "batch_size": 16, "threads": 1,
              "exclusive": True}
    cost = costs.cost_summary(seeds, window)
    assert cost["train_cpu_time_s"] == 20.0 and cost["train_wall_time_s"] == 12.0
    assert cost["peak_rss_mb"] == 900.0 and cost["peak_rss_mb_runs"] == [900.0, 700.0]
    assert cost["gpu_peak_mb"] is None and cost["window"] is window
    assert "12 timed optimizer steps of 16 rows after 3 warm-up steps" in cost["how"]


# ------------------------------------------------------------------------------------------------ schedule
def test_overlaps_from_intervals():
    intervals = {"a": (0.0, 10.0), "b": (5.0, 15.0), "c": (10.0, 12.0), "d": (20.0, 30.0), "e": (1.0, 2.0)}
    assert costs.overlaps(intervals) == {
        "a": ["b", "e"],  # c starts as a ends: not at the same time
        "b": ["a", "c"],
        "c": ["b"],
        "d": [],
        "e": ["a"],
    }


def test_schedules_are_written_for_finished_experiments_and_loaded_beside_their_metrics(tmp_path):
    configs = [{"name": n, "kind": "encoder", "profile": "p", "output_dir": str(tmp_path / "p" / n)}
               for n in ("ft", "lora", "killed")]
    for config in configs[:2]:
        write_metrics(config, {"validation_matched": {"accuracy": 0.5}})
    intervals = {"ft": (100.0, 160.5), "lora": (100.0, 130.0), "killed": (130.0, 170.0)}
    write_schedules(configs, intervals, {"ft", "lora"}, jobs=2, threads=1)
    ft = read_json(tmp_path / "p" / "ft" / SCHEDULE)
    assert ft["overlapped_with"] == ["killed", "lora"] and ft["wall_time_s"] == 60.5
    assert (ft["jobs"], ft["threads"]) == (2, 1)
    assert not (tmp_path / "p" / "killed" / SCHEDULE).exists()
    loaded = load_results(tmp_path, "p")
    assert loaded["lora"]["schedule"]["overlapped_with"] == ["ft"]  # lora ended as killed started
    assert set(loaded) == {"ft", "lora"}


def test_the_trainer_callback_holds_the_lock_while_training_and_lets_a_window_in_at_step_ends(monkeypatch):
    callback = costs.step_lock_callback()
    lock = costs._lock()
    taken = []
    monkeypatch.setattr(lock, "take_shared", lambda: taken.append("take"))
    monkeypatch.setattr(lock, "release", lambda: taken.append("release"))
    callback.on_train_begin(None, None, None)
    assert lock.mode == "shared"
    callback.on_step_end(None, None, None)  # the boundary: let go, take again
    callback.on_prediction_step(None, None, None)  # an evaluation inside training: also a boundary
    callback.on_evaluate(None, None, None)  # does not end training's hold
    assert lock.mode == "shared"
    callback.on_train_end(None, None, None)
    assert lock.mode is None
    assert taken == ["take", "release", "take", "release", "take", "release"]
    taken.clear()
    callback.on_prediction_step(None, None, None)  # `predict` after training: held from its first batch
    callback.on_prediction_step(None, None, None)
    callback.on_predict(None, None, None)
    assert taken == ["take", "release", "take", "release"] and lock.mode is None


def test_a_sequential_run_writes_schedules_and_shares_the_lock_folder(tmp_path, monkeypatch):
    from nlilab.run import execute, runner

    seen = {}

    def fake_run(config, force=False, key=None):
        seen[config["name"]] = os.environ.get(costs.LOCK_ENV)
        if config["name"] == "fresh":
            return execute.Outcome("fresh", "skipped", 0.0)
        time.sleep(0.05)
        return execute.Outcome(config["name"], "ran", 0.05)

    monkeypatch.setattr(runner, "run_experiment", fake_run)
    configs = [{"name": n, "notebook": "x", "profile": "p", "results_dir": str(tmp_path),
                "output_dir": str(tmp_path / "p" / n)} for n in ("a", "fresh", "b")]
    monkeypatch.delenv(costs.LOCK_ENV, raising=False)
    runner.run_sequential(configs, force=False)
    # the machine-wide folder, shared with nlilab processes of any other profile or results folder
    assert set(seen.values()) == {str(costs.lock_dir())} and costs.LOCK_ENV not in os.environ
    assert not str(costs.lock_dir()).startswith(str(tmp_path))
    a, b = (read_json(tmp_path / "p" / n / SCHEDULE) for n in ("a", "b"))
    assert a["overlapped_with"] == [] and b["overlapped_with"] == [] and a["jobs"] == 1
    assert a["wall_time_s"] >= 0.05 and a["ended_at"] <= b["started_at"]
    assert not (tmp_path / "p" / "fresh" / SCHEDULE).exists()  # skipped: its last run's schedule stands
