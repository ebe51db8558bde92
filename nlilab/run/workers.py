"""Parallel runs: worker processes, the number of jobs, the schedule each experiment ran in."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.results import SCHEDULE, atomic_write_json, read_json
from nlilab.run.cache import CACHE_FILE, cache_key
from nlilab.run.execute import FAILURE_FILE, Outcome, run_experiment
from nlilab.training.costs import LOCK_ENV, schedules


# ------------------------------------------------------------------------------------------------ schedule
@contextmanager
def lock_folder(configs: list[dict]):
    """While experiments run, NLILAB_LOCK_DIR names nlilab.training.costs' lock folder explicitly (the user's own, or the
    machine-wide default), so every worker and kernel of this run shares one timing lock with every other nlilab
    process on the machine: a timing window then pauses whatever else of nlilab runs, whichever profile or
    results folder it writes to."""
    from nlilab.training.costs import lock_dir

    previous = os.environ.get(LOCK_ENV)
    if configs:
        os.environ[LOCK_ENV] = str(lock_dir())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous


def write_schedules(configs: list[dict], intervals: dict, finished: set[str], jobs: int, threads: int) -> None:
    """Once every experiment of the run has ended: each finished experiment's schedule.json, saying beside
    which others it ran (from all the intervals, an interrupted experiment's too), so that its wall time can be
    read for what it is."""
    records = schedules(intervals, jobs, threads)
    for config in configs:
        if config["name"] in finished:
            atomic_write_json(Path(config["output_dir"]) / SCHEDULE, records[config["name"]])


# ------------------------------------------------------------------------------------------------ parallel runs
MAX_AUTO_JOBS = 4
GB_PER_JOB = 6  # the largest CPU experiment (QLoRA of SmolLM2) peaks at about 4 GB resident


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return float(GB_PER_JOB)


def _gpu_count() -> int:
    """GPUs this process can see (CUDA_VISIBLE_DEVICES included); the tests stand in other counts here."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_devices() -> list[str]:
    """The visible GPUs, each as a worker's CUDA_VISIBLE_DEVICES must name it: when the runner itself was
    started with CUDA_VISIBLE_DEVICES (say "4,6", or GPU UUIDs), worker 0 gets "4", not "0"."""
    count = _gpu_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        # CUDA stops at the first entry it cannot use; the count says how many it took
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def _uses_gpu(config: dict) -> bool:
    if config["kind"] == "data":
        return False
    from nlilab.training.trainer import (
        resolve_device,  # the one place that says what 'auto' means on this machine
    )

    return resolve_device(config) == "cuda"


def resolve_jobs(jobs: int | str, pending: list[dict]) -> int:
    """How many experiments run at once. 'auto': when any uses the GPU, one per visible GPU (each worker gets
    its own, see run_parallel); else one per core up to MAX_AUTO_JOBS and what the memory allows. Never more
    than there are experiments."""
    if not pending:
        return 1
    if jobs != "auto":
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise NlilabError(f"jobs must be a positive whole number or 'auto', got {jobs!r}")
        return min(jobs, len(pending))
    if any(_uses_gpu(c) for c in pending):
        return max(1, min(_gpu_count(), len(pending)))
    return max(1, min(MAX_AUTO_JOBS, _cpu_count(), int(_memory_gb() // GB_PER_JOB), len(pending)))


def pick_gpu(devices: list[str], busy: list[str]) -> str:
    """The GPU for the next GPU experiment: a free one (the first in the list, so a GPU freed by a finished
    worker is reused before an idle one further on), or the least shared one when `--jobs` asked for more
    experiments at once than there are GPUs."""
    return min(devices, key=lambda d: (busy.count(d), devices.index(d)))


def log_path(config: dict) -> Path:
    return Path(config["reports_dir"]) / config["profile"] / "logs" / f"{config['name']}.log"


def _expected_seconds(config: dict) -> float:
    """Last run's time, or a rough guess by kind; only orders a parallel run (longest first, so that a long
    experiment does not start last and leave the other workers idle)."""
    previous = read_json(Path(config["output_dir"]) / CACHE_FILE) or {}
    if previous.get("seconds"):
        return float(previous["seconds"])
    seeds = len(config.get("seeds") or [0]) * len((config.get("sweep") or {}).get("values") or [0])
    return {"data": 15.0, "prompting": 60.0, "encoder": 90.0, "qlora": 300.0}.get(config["kind"], 60.0) * seeds


@contextmanager
def _output_to_log(config: dict):
    """This process's stdout and stderr into the experiment's log file, file descriptors too (the kernel
    inherits them, and its own start-up messages belong in the log); restored afterwards, for a process that
    goes on (a Ray worker)."""
    path = log_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    try:
        with open(path, "w", encoding="utf-8", buffering=1) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = log
            try:
                yield
            finally:
                sys.stdout, sys.stderr = streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run_logged(config: dict, force: bool, key: dict, threads: int, device: str | None = None) -> Outcome:
    """One experiment as a worker runs it (a local worker process or a Ray task): its output in its log file.
    `device` (when not None) becomes CUDA_VISIBLE_DEVICES, "" hiding every GPU from a CPU-only experiment;
    this must happen before torch is imported in this process, and the kernel inherits it."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the notebook's kernel inherits them
        os.environ.setdefault(var, str(threads))
    with _output_to_log(config):
        return run_experiment(config, force=force, key=key)


def _child(config: dict, force: bool, key: dict, threads: int, device: str | None, conn) -> None:
    """A worker process: one experiment, the outcome sent back. The cache key comes from the runner, taken
    just before the start, as in a sequential run. Nothing imported so far in this process imports torch, so
    the device set in run_logged is the one CUDA sees."""
    outcome = run_logged(config, force, key, threads, device)
    conn.send(outcome.__dict__)
    conn.close()


def record_failure(config: dict, error: str, seconds: float) -> Outcome:
    """A failure that happened outside the notebook (its worker died, or the Ray task did), written where a
    notebook's failure would be, so that the report shows it and the next run retries the experiment."""
    atomic_write_json(Path(config["output_dir"]) / FAILURE_FILE,
                      {"experiment": config["name"], "notebook": config["notebook"], "error": error,
                       "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Outcome(config["name"], "failed", seconds, error)


def _died(config: dict, exitcode: int | None, seconds: float) -> Outcome:
    """A worker that ended without an outcome (killed, out of memory): recorded like any failure."""
    how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exit status {exitcode}"
    return record_failure(config, f"the worker process running this experiment ended without a result ({how}); "
                                  f"see {log_path(config)}", seconds)


@dataclass
class _Worker:
    process: object
    pipe: object
    config: dict
    started: float  # perf_counter, for durations
    began: float  # time.time(), for the schedule
    device: str | None  # its CUDA_VISIBLE_DEVICES; None: left as the runner's

    def outcome(self) -> Outcome:
        """After the worker reported or ended: its outcome, or a failure if it died without one."""
        try:
            result = self.pipe.recv()
        except EOFError:  # nothing was sent: the worker died
            result = None
        self.process.join()
        return Outcome(**result) if result else _died(self.config, self.process.exitcode,
                                                      time.perf_counter() - self.started)


def _start_worker(ctx, config: dict, force: bool, threads: int, device: str | None = None) -> _Worker:
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(config, force, cache_key(config), threads, device, send),
                          name=config["name"])
    process.start()
    send.close()  # the worker holds the only sending end: its death reads as EOF here
    return _Worker(process, receive, config, time.perf_counter(), time.time(), device)


def run_parallel(configs: list[dict], pending: list[dict], jobs: int, force: bool) -> list[Outcome]:
    """Up to `jobs` experiments at once, each in a fresh process (papermill changes the working directory, so
    it is not thread-safe) with cores // jobs threads. When some use the GPU, each of those gets a GPU of its
    own for as long as it runs (pick_gpu), and a CPU-only one sees none. Each notebook's output goes to its log
    file; here, one bar over the experiments and a line as each starts and ends. Outcomes come back in the
    profile's order. Once all have ended, each finished experiment's schedule.json says which others ran
    beside it."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")
    threads = max(1, _cpu_count() // jobs)
    outcomes = {c["name"]: Outcome(c["name"], "skipped", 0.0) for c in configs}
    queue = sorted(pending, key=_expected_seconds, reverse=True)
    needs_gpu = {c["name"]: _uses_gpu(c) for c in pending}
    devices = gpu_devices() if any(needs_gpu.values()) else []
    running: dict[str, _Worker] = {}
    print(f"running {len(pending)} experiment(s), {jobs} at a time with {threads} thread(s) each"
          + (f", each GPU experiment on a GPU of its own from {','.join(devices)}" if devices else "")
          + f"; their output: {log_path(pending[0]).parent}/<experiment>.log", flush=True)
    fresh = [c["name"] for c in configs if c not in pending]
    if fresh:
        print(f"unchanged since their last run, skipped: {', '.join(fresh)}", flush=True)
    bar = tqdm(total=len(pending), desc="experiments", unit="exp", file=sys.stdout)
    intervals, finished = {}, set()
    # set before the first worker starts: a spawned process copies the environment
    with lock_folder(configs):
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    config = queue.pop(0)
                    device = None  # no GPU to share out: the environment stays as it was
                    if devices:
                        device = (pick_gpu(devices, [w.device for w in running.values()])
                                  if needs_gpu[config["name"]] else "")
                    running[config["name"]] = _start_worker(ctx, config, force, threads, device)
                    bar.write(f"started {config['name']} ({config['notebook']})"
                              + (f" on GPU {device}" if device else ""))
                now = time.perf_counter()
                bar.set_postfix_str(", ".join(f"{n} {now - w.started:.0f}s" for n, w in running.items()))
                # Wake when a worker reports or dies, or every few seconds to show the elapsed times.
                ready = wait([w.pipe for w in running.values()] + [w.process.sentinel for w in running.values()],
                             timeout=5)
                for name, worker in list(running.items()):
                    if worker.pipe in ready or worker.process.sentinel in ready:
                        outcomes[name] = outcome = worker.outcome()
                        intervals[name] = (worker.began, time.time())
                        finished.add(name)
                        del running[name]
                        bar.update(1)
                        bar.write(f"{name}: {outcome.status} in {outcome.seconds:.1f} s")
                        if outcome.error:
                            bar.write(outcome.error, file=sys.stderr)
        finally:
            for name, worker in running.items():  # interrupted: stop the workers, keep what they finished
                worker.process.terminate()
                intervals[name] = (worker.began, time.time())
            write_schedules(configs, intervals, finished, jobs, threads)
            bar.close()
    return [outcomes[c["name"]] for c in configs]
