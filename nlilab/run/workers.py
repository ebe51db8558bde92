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


def _uses_gpu(config: dict) -> bool:
    if config["kind"] == "data":
        return False
    from nlilab.training.trainer import (
        resolve_device,  # the one place that says what 'auto' means on this machine
    )

    return resolve_device(config) == "cuda"


def resolve_jobs(jobs: int | str, pending: list[dict]) -> int:
    """How many experiments run at once. 'auto': one when any uses the GPU (they would share its memory), else
    one per core up to MAX_AUTO_JOBS and what the memory allows; never more than there are experiments."""
    if not pending:
        return 1
    if jobs != "auto":
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise NlilabError(f"jobs must be a positive whole number or 'auto', got {jobs!r}")
        return min(jobs, len(pending))
    if any(_uses_gpu(c) for c in pending):
        return 1
    return max(1, min(MAX_AUTO_JOBS, _cpu_count(), int(_memory_gb() // GB_PER_JOB), len(pending)))


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


def _child(config: dict, force: bool, key: dict, threads: int, conn) -> None:
    """A worker process: one experiment, its output in its log file, the outcome sent back. The cache key
    comes from the runner, taken just before the start, as in a sequential run."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the notebook's kernel inherits them
        os.environ.setdefault(var, str(threads))
    path = log_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", buffering=1) as log:
        # File descriptors too: the kernel inherits them, and its own start-up messages belong in the log.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        outcome = run_experiment(config, force=force, key=key)
    conn.send(outcome.__dict__)
    conn.close()


def _died(config: dict, exitcode: int | None, seconds: float) -> Outcome:
    """A worker that ended without an outcome (killed, out of memory): recorded like any failure."""
    how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exit status {exitcode}"
    tail = f"the worker process running this experiment ended without a result ({how}); see {log_path(config)}"
    atomic_write_json(Path(config["output_dir"]) / FAILURE_FILE,
                      {"experiment": config["name"], "notebook": config["notebook"], "error": tail,
                       "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Outcome(config["name"], "failed", seconds, tail)


@dataclass
class _Worker:
    process: object
    pipe: object
    config: dict
    started: float  # perf_counter, for durations
    began: float  # time.time(), for the schedule

    def outcome(self) -> Outcome:
        """After the worker reported or ended: its outcome, or a failure if it died without one."""
        try:
            result = self.pipe.recv()
        except EOFError:  # nothing was sent: the worker died
            result = None
        self.process.join()
        return Outcome(**result) if result else _died(self.config, self.process.exitcode,
                                                      time.perf_counter() - self.started)


def _start_worker(ctx, config: dict, force: bool, threads: int) -> _Worker:
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(config, force, cache_key(config), threads, send), name=config["name"])
    process.start()
    send.close()  # the worker holds the only sending end: its death reads as EOF here
    return _Worker(process, receive, config, time.perf_counter(), time.time())


def run_parallel(configs: list[dict], pending: list[dict], jobs: int, force: bool) -> list[Outcome]:
    """Up to `jobs` experiments at once, each in a fresh process (papermill changes the working directory, so
    it is not thread-safe) with cores // jobs threads. Each notebook's output goes to its log file; here, one
    bar over the experiments and a line as each starts and ends. Outcomes come back in the profile's order. Once
    all have ended, each finished experiment's schedule.json says which others ran beside it."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")
    threads = max(1, _cpu_count() // jobs)
    outcomes = {c["name"]: Outcome(c["name"], "skipped", 0.0) for c in configs}
    queue = sorted(pending, key=_expected_seconds, reverse=True)
    running: dict[str, _Worker] = {}
    print(f"running {len(pending)} experiment(s), {jobs} at a time with {threads} thread(s) each; "
          f"their output: {log_path(pending[0]).parent}/<experiment>.log", flush=True)
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
                    running[config["name"]] = _start_worker(ctx, config, force, threads)
                    bar.write(f"started {config['name']} ({config['notebook']})")
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
