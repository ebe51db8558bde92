"""Cost figures that compare fairly whatever else ran on the machine at the same time.

With `--jobs 2` two experiments share the cores, memory bandwidth and caches, so their wall times and
samples/s depend on what happened to run beside them. What this module measures does not:

- per seed (`SeedMeter`): process CPU time (user + system, all threads: the work done, however the cores were
  shared), wall time (what a user waits; it depends on the load, so the runner's schedule.json says what
  overlapped), and the peak resident memory *of that seed*: the kernel's high-water mark is reset when the seed
  starts, so a later seed does not inherit an earlier seed's peak;
- per method, a short timing window (`training_window`, `scoring_window`): a warm-up, then a fixed number of
  steps on fixed rows with one thread, while holding a lock that pauses every other nlilab process at its next
  step boundary. Its throughput is what the method costs on one core of this machine with nothing else of
  nlilab running;
- that lock (`shared_step`, `exclusive`, `step_lock_callback`): every nlilab process holds it shared around each
  training step and scoring batch; a window holds it exclusively. It is a file lock in NLILAB_LOCK_DIR (by default
  one folder per user in the system's temp folder), so it spans the runner's workers, their kernels and any
  other nlilab process of the user on this machine, whatever profile or results folder it writes to.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock; windows then say they were not exclusive
    fcntl = None

LOCK_ENV = "NLILAB_LOCK_DIR"
GATE_FILE = ".nlilab-costs.gate.lock"
STEPS_FILE = ".nlilab-costs.steps.lock"
WINDOW_STEPS = 12  # about 2 s for MiniLM at batch 16 on one core: long enough to average out a step's jitter
WINDOW_WARMUP = 3  # the first steps allocate the optimizer's state and warm the allocator and caches
WINDOW_REPEATS = 3  # the timed steps run this many times; the fastest run counts (see _fastest)
EXCLUSIVE_TIMEOUT_S = 300.0  # a window waits at most this long for the other processes' steps to end
SCORING_ROWS = 32
SCORING_WARMUP = 4
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# ================================================================================================ peaks
def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return _vm_hwm_kb() is not None
    except OSError:
        return False


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: since the last reset_peak_rss where /proc allows one, else
    over the process's whole life (ru_maxrss)."""
    kb = _vm_hwm_kb()
    if kb is not None:
        return kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def _cuda():
    """torch, if it is loaded and sees a GPU: measuring must not be what imports torch or initialises CUDA."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


PEAK_HOW = {
    True: "VmHWM, the kernel's peak resident memory of the process, reset at the seed's start",
    False: "ru_maxrss, the process's lifetime peak (this kernel allows no reset), so a seed may show an earlier "
           "seed's peak",
}


class SeedMeter:
    """Measures one seed: `with SeedMeter() as meter: ...`, then `meter.record()`.

    wall_s: elapsed time; cpu_s: process CPU time of all threads; peak_rss_mb: the peak resident memory since
    the seed started; gpu_peak_mb: torch's peak allocated GPU memory since then (None without a GPU);
    paused_s: of the wall time, how long this process waited for other processes' timing windows."""

    def __enter__(self) -> SeedMeter:
        self.resettable = reset_peak_rss()
        cuda = _cuda()
        if cuda is not None:
            cuda.cuda.reset_peak_memory_stats()
        self._paused = _lock().paused_s
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        self._end = None
        return self

    def __exit__(self, *exc) -> None:
        self._end = self._snapshot()

    def _snapshot(self) -> dict:
        cuda = _cuda()
        return {"wall_s": time.perf_counter() - self._wall, "cpu_s": time.process_time() - self._cpu,
                "peak_rss_mb": peak_rss_mb(),
                "gpu_peak_mb": cuda.cuda.max_memory_allocated() / 2**20 if cuda is not None else None,
                "paused_s": _lock().paused_s - self._paused}

    def record(self) -> dict:
        """The measures (so far, if still inside the `with`) and how the peak was taken."""
        return {**(self._end or self._snapshot()), "peak_how": PEAK_HOW[self.resettable]}


# ================================================================================================ the lock
def lock_dir() -> Path:
    folder = os.environ.get(LOCK_ENV)
    if folder:
        return Path(folder)
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"nlilab-locks-{user}"


class _ProcessLock:
    """This process's side of the lock. Two files: `steps`, held shared during a step and exclusively during a
    window, and `gate`, which a window takes first and a step passes through on its way in. flock on Linux does
    not queue waiters: without the gate, workers whose steps overlap would hold `steps` shared without a break
    and a window could wait for ever. With it, steps that start after a window asked wait behind it.

    The state is per process: a step inside a step, or a step inside this process's own window, takes nothing
    more (the process already holds what it needs)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, int] = {}
        self.mode: str | None = None  # None | "shared" | "exclusive"
        self.depth = 0
        self.paused_s = 0.0  # time spent waiting for other processes' windows

    def _fd(self, name: str) -> int:
        if name not in self.files:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.files[name] = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o666)
        return self.files[name]

    def _flock(self, name: str, op: str) -> None:
        """op: "SH", "EX" or "UN"."""
        if fcntl is not None:
            flags = 0
            for part in op.split("|"):
                flags |= getattr(fcntl, f"LOCK_{part}")
            fcntl.flock(self._fd(name), flags)

    def _try_flock(self, name: str, op: str, seconds: float) -> bool:
        """Keep trying for `seconds`; False if the lock was not had by then."""
        deadline = time.perf_counter() + seconds
        while True:
            try:
                self._flock(name, op + "|NB")
                return True
            except BlockingIOError:
                if time.perf_counter() > deadline:
                    return False
                time.sleep(0.01)

    def take_shared(self) -> None:
        started = time.perf_counter()
        self._flock(GATE_FILE, "SH")
        self._flock(STEPS_FILE, "SH")
        self._flock(GATE_FILE, "UN")
        self.paused_s += time.perf_counter() - started

    def release(self) -> None:
        self._flock(STEPS_FILE, "UN")

    def take_exclusive(self) -> tuple[bool, float]:
        """(whether it was had, seconds waited). Keeps the gate until release_exclusive. Gives up after
        EXCLUSIVE_TIMEOUT_S: a process whose training raised inside a still-running kernel (an interactive
        session) never reaches the callback's end and keeps its shared hold; a window must not wait for it."""
        started = time.perf_counter()
        self._flock(GATE_FILE, "EX")
        if self._try_flock(STEPS_FILE, "EX", EXCLUSIVE_TIMEOUT_S):
            return True, time.perf_counter() - started
        self._flock(GATE_FILE, "UN")
        return False, time.perf_counter() - started

    def release_exclusive(self, back_to_shared: bool, held: bool = True) -> None:
        # While the gate is held no other window can slip in between, so a step interrupted by its own
        # process's window gets its shared hold back at once.
        if held:
            self._flock(STEPS_FILE, "SH" if back_to_shared else "UN")
            self._flock(GATE_FILE, "UN")
        elif back_to_shared:
            self.take_shared()


_LOCKS: dict[tuple[str, int], _ProcessLock] = {}


def _lock() -> _ProcessLock:
    """Keyed by process id as well: a forked child must open its own files (an inherited descriptor would share
    the parent's lock)."""
    key = (str(lock_dir()), os.getpid())
    if key not in _LOCKS:
        _LOCKS[key] = _ProcessLock(Path(key[0]))
    return _LOCKS[key]


def _enter_shared() -> None:
    lock = _lock()
    if lock.mode is None:
        lock.take_shared()
        lock.mode = "shared"
    lock.depth += 1


def _leave_shared() -> None:
    lock = _lock()
    lock.depth -= 1
    if lock.depth == 0 and lock.mode == "shared":
        lock.release()
        lock.mode = None


def _yield_shared() -> None:
    """At a step boundary: let a waiting window in, then carry on."""
    lock = _lock()
    if lock.mode == "shared":
        lock.release()
        lock.take_shared()


@contextmanager
def shared_step():
    """Around one training step or scoring batch: cheap (two uncontended flock calls), and it waits only while
    another process's timing window runs."""
    _enter_shared()
    try:
        yield
    finally:
        _leave_shared()


@contextmanager
def exclusive(threads: int = 1):
    """Nothing else of nlilab runs a step while this is held, and torch (if loaded: whatever is timed here uses
    it) runs `threads` threads, restored on exit. Yields a dict: {"exclusive": whether a lock was taken,
    "threads", "waited_s": how long it waited for other processes' steps to end}."""
    torch = sys.modules.get("torch")
    lock = _lock()
    outer = lock.mode
    if outer == "shared":  # this process's own step: give it up for the window, take it back after
        lock.release()
    held, waited = lock.take_exclusive() if outer != "exclusive" else (True, 0.0)
    lock.mode = "exclusive"
    info = {"exclusive": fcntl is not None and held, "threads": threads, "waited_s": waited}
    previous = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(threads)
    try:
        yield info
    finally:
        if torch:
            torch.set_num_threads(previous)
        if outer != "exclusive":
            lock.release_exclusive(back_to_shared=outer == "shared", held=held)
            lock.mode = outer


def step_lock_callback():
    """A transformers TrainerCallback that holds the shared lock while the Trainer trains (steps, and the
    evaluations and checkpoints between them) and lets a waiting window in at each step boundary; prediction
    after training holds it from its first batch's end to the end of `predict`. Built on call so that importing
    this module does not import transformers."""
    from transformers import TrainerCallback

    class StepLock(TrainerCallback):
        def __init__(self):
            self.training = False
            self.predicting = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True
            _enter_shared()

        def on_step_end(self, args, state, control, **kwargs):
            _yield_shared()

        def on_train_end(self, args, state, control, **kwargs):
            self._stop_predicting()
            self.training = False
            _leave_shared()

        def on_prediction_step(self, args, state, control, **kwargs):
            if self.training or self.predicting:
                _yield_shared()
            else:  # no hook marks the start of `predict`: its first batch runs unlocked
                self.predicting = True
                _enter_shared()

        def on_evaluate(self, args, state, control, **kwargs):
            self._stop_predicting()

        def on_predict(self, args, state, control, **kwargs):
            self._stop_predicting()

        def _stop_predicting(self):
            if self.predicting:
                self.predicting = False
                _leave_shared()

    return StepLock()


# ================================================================================================ windows
def _rng_state() -> dict:
    import numpy as np
    import torch

    cuda = _cuda()
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": cuda.cuda.get_rng_state_all() if cuda is not None else None}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _input_names(model) -> set[str] | None:
    """The batch keys the model's forward accepts (None: any, through **kwargs), as the Trainer drops the
    others."""
    import inspect

    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def window_batches(model, collator, train_dataset, batch_size: int, steps: int, seed: int) -> list[dict]:
    """`steps` batches of `batch_size` rows drawn with `seed` (with replacement only if the set is too small),
    each padded by the collator to its own longest row, as in training."""
    import numpy as np

    accepted = _input_names(model)
    keep = [k for k in MODEL_INPUTS if accepted is None or k in accepted]
    need = steps * batch_size
    rows = np.random.default_rng(seed).choice(len(train_dataset), size=need, replace=len(train_dataset) < need)
    features = [{k: v for k, v in train_dataset[int(i)].items() if k in keep} for i in rows]
    return [collator(features[s * batch_size:(s + 1) * batch_size]) for s in range(steps)]


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device, dtype=dtype) if dtype else contextlib.nullcontext()


def _train_step(model, optimizer, params, batch, device: str, precision: str) -> None:
    """What the Trainer does per optimizer step: forward, backward, clip, AdamW, zero the gradients."""
    import torch

    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(device, precision):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _fastest(repeats: int, work, device: str = "cpu") -> tuple[float, float]:
    """(seconds, CPU seconds) of the fastest of `repeats` runs of `work`. The lock keeps nlilab's own processes
    out, not the rest of the machine (other users, a virtual machine's neighbours): a run they slowed down is
    slower, never faster, so the fastest run is the least disturbed one, as `timeit` reasons."""
    best = None
    for _ in range(max(1, repeats)):
        started_cpu, started = time.process_time(), time.perf_counter()
        work()
        _sync(device)
        run = (time.perf_counter() - started, time.process_time() - started_cpu)
        best = run if best is None or run[0] < best[0] else best
    return best


def training_window(model, collator, train_dataset, batch_size: int, device: str = "cpu",
                    steps: int = WINDOW_STEPS, warmup: int = WINDOW_WARMUP, seed: int = 0,
                    learning_rate: float = 1e-5, precision: str = "fp32", threads: int = 1,
                    repeats: int = WINDOW_REPEATS) -> dict:
    """Time `steps` optimizer steps (forward + backward + AdamW on the trainable parameters) of the real model
    after `warmup` untimed ones, holding the exclusive lock with `threads` threads. Afterwards the trainable
    parameters, their gradients, the train/eval mode and the python/numpy/torch random states are exactly what
    they were, so the training that follows is the one it would have been without the window.

    Call it before the Trainer is built (and before a SeedMeter starts: the window's optimizer state is not part
    of the seed's memory). Tokens are the rows' real (non-pad) tokens; virtual prompt tokens are not counted."""
    import torch

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = {name: p.detach().clone() for name, p in params.items()}
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in params.items()}
    rng, was_training = _rng_state(), model.training
    batches = window_batches(model, collator, train_dataset, batch_size, steps, seed)
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                 for b in batches)
    trainable = list(params.values())
    try:
        model.train()
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
        with exclusive(threads) as info:
            for step in range(warmup):
                _train_step(model, optimizer, trainable, batches[step % steps], device, precision)
            _sync(device)
            seconds, cpu = _fastest(repeats, lambda: [_train_step(model, optimizer, trainable, batch, device,
                                                                   precision) for batch in batches], device)
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
                p.grad = grads[name]
        _set_rng_state(rng)
        model.train(was_training)
    # Per CPU second as well: the lock pauses nlilab's other processes, not other users of the machine; with one
    # thread, CPU time is what the steps cost even where such load took part of the wall time.
    return {"samples_per_second": steps * batch_size / seconds, "tokens_per_second": tokens / seconds,
            "samples_per_cpu_second": steps * batch_size / cpu if cpu > 0 else None,
            "steps": steps, "warmup": warmup, "repeats": repeats, "batch_size": batch_size, "seconds": seconds,
            "cpu_s": cpu,
            "device": device, **info}


def scoring_window(score, items: list, rows: int = SCORING_ROWS, warmup: int = SCORING_WARMUP,
                   threads: int = 1) -> dict:
    """Time `score(items[:rows])` after an untimed `score(items[:warmup])`, holding the exclusive lock with
    `threads` threads: examples per second of a prompting method with nothing else of nlilab running. `score`
    must not change anything a later result depends on (scoring a fixed model does not)."""
    rows = min(rows, len(items))
    with exclusive(threads) as info:
        if warmup:
            score(items[:warmup])
        started_cpu, started = time.process_time(), time.perf_counter()
        score(items[:rows])
        seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {"examples_per_second": rows / seconds, "examples_per_cpu_second": rows / cpu if cpu > 0 else None,
            "rows": rows, "warmup": min(warmup, len(items)), "seconds": seconds, "cpu_s": cpu, **info}


# ================================================================================================ summaries
def cost_summary(seeds: list[dict], window: dict | None, activity: str = "train") -> dict:
    """metrics.json's "cost" block from each seed's SeedMeter record and the method's window. `activity` names
    what the seeds' times cover ("train", or "eval" for prompting)."""
    import numpy as np

    def mean(key):
        values = [s[key] for s in seeds if s.get(key) is not None]
        return float(np.mean(values)) if values else None

    peaks = [s["peak_rss_mb"] for s in seeds]
    gpu = [s["gpu_peak_mb"] for s in seeds if s.get("gpu_peak_mb") is not None]
    hows = {s["peak_how"] for s in seeds}
    return {f"{activity}_cpu_time_s": mean("cpu_s"), f"{activity}_wall_time_s": mean("wall_s"),
            "window": window, "peak_rss_mb": max(peaks) if peaks else None, "peak_rss_mb_runs": peaks,
            "gpu_peak_mb": max(gpu) if gpu else None, "how": describe(window, hows, activity)}


def describe(window: dict | None, peak_hows: set[str], activity: str = "train") -> str:
    """One sentence on how the cost block was measured."""
    what = "training" if activity == "train" else "scoring"
    parts = [f"{what} CPU time is the process's user+system time over all threads, per seed"]
    if window:
        alone = ("with every other nlilab process paused" if window["exclusive"] else
                 "while other nlilab processes may have run (the lock could not be had)")
        repeats = window.get("repeats") or 1
        best = f" (the fastest of {repeats} runs)" if repeats > 1 else ""
        timed = (f"{window['steps']} timed optimizer steps of {window['batch_size']} rows after {window['warmup']} "
                 f"warm-up steps{best}" if "samples_per_second" in window else
                 f"scoring {window['rows']} rows after {window['warmup']} warm-up rows")
        parts.append(f"throughput comes from {timed}, on {window['threads']} thread(s), {alone}")
    if peak_hows:
        parts.append("peak memory is " + "; ".join(sorted(peak_hows)))
    return "; ".join(parts) + "."


def overlaps(intervals: dict[str, tuple[float, float]]) -> dict[str, list[str]]:
    """For each name, the other names whose (start, end) interval overlapped its own; intervals that only touch
    (one ends as the other starts) did not run at the same time."""
    return {name: sorted(other for other, (s2, e2) in intervals.items()
                         if other != name and s2 < end and start < e2)
            for name, (start, end) in intervals.items()}


def schedules(intervals: dict[str, tuple[float, float]], jobs: int, threads: int | None) -> dict[str, dict]:
    """Each experiment's schedule.json: when it ran (epoch seconds in, local ISO times out), beside what."""

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))

    beside = overlaps(intervals)
    return {name: {"jobs": jobs, "threads": threads, "started_at": stamp(start), "ended_at": stamp(end),
                   "wall_time_s": round(end - start, 3), "overlapped_with": beside[name]}
            for name, (start, end) in intervals.items()}
