"""Runs a profile: preflight, then every experiment in order (sequentially or in parallel workers)."""

from __future__ import annotations

import os
import sys
import time

from nlilab.errors import NlilabError, ParamsError
from nlilab.params import Profile, load_profile, with_output_dirs, with_processes
from nlilab.run import cache
from nlilab.run.execute import Outcome, run_experiment
from nlilab.run.preflight import preflight
from nlilab.run.workers import (
    _cpu_count,
    lock_folder,
    resolve_jobs,
    run_parallel,
    write_schedules,
)

EXECUTORS = ("local", "ray")


def run_profile(profile: str | Profile, force: bool = False, only: list[str] | None = None,
                results_dir=None, reports_dir=None, render: bool = True, jobs: int | str = "auto",
                executor: str = "local", address: str | None = None, processes: int | None = None,
                machine_rank: int | None = None) -> list[Outcome]:
    """Every experiment of the profile (or of `only`) that is not fresh, then the report. executor "local":
    on this machine (run_sequential, or run_parallel when several run at once); "ray": as Ray tasks on the
    cluster at `address` (nlilab.run.ray_executor); the cache, the failure records and the report are the
    same either way. `processes`, `machine_rank`: the profile's values for every experiment that trains
    (nlilab.training.distributed)."""
    if executor not in EXECUTORS:
        raise NlilabError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        from nlilab.run.ray_executor import import_ray, run_ray

        import_ray()  # before the profile's validation and the preflight's hashing: a missing extra is said at once
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    names = list(prof.experiments)
    if only:
        unknown = [n for n in only if n not in prof.experiments]
        if unknown:
            raise ParamsError(f"{prof.path}: --only names unknown experiment(s) {', '.join(unknown)}; "
                              f"the profile has {', '.join(names)}")
        names = [n for n in names if n in only]
    configs = [with_processes(with_output_dirs(prof, name, results_dir, reports_dir), processes, machine_rank)
               for name in names]
    # the GPUs of a Ray cluster are not this machine's: the Ray executor checks the cluster's instead
    keys = preflight(prof, configs, force, local_device=executor == "local")
    pending = [c for c in configs if force or not cache.is_fresh(c, keys[c["name"]])]
    if executor == "ray":
        outcomes = run_ray(configs, pending, force, address=address, jobs=jobs)
    elif (workers := _jobs(jobs, pending)) > 1:
        outcomes = run_parallel(configs, pending, workers, force)
    else:
        outcomes = run_sequential(configs, force)
    if render and names:
        from nlilab.report.build import build_report

        path = build_report(prof, results_dir=configs[0]["results_dir"], reports_dir=configs[0]["reports_dir"])
        print(f"report: {path}", flush=True)
    return outcomes


def _jobs(jobs: int | str, pending: list[dict]) -> int:
    """resolve_jobs, but 'auto' runs one experiment at a time while one of them trains in several processes:
    those take the machine's GPUs (or its cores) between them."""
    if jobs == "auto" and any(c.get("processes", 1) > 1 for c in pending):
        return 1
    return resolve_jobs(jobs, pending)


def run_sequential(configs: list[dict], force: bool) -> list[Outcome]:
    """One experiment after the other in this process; papermill's bar and the notebook's output stream here."""
    outcomes, intervals = [], {}
    with lock_folder(configs):
        try:
            for index, config in enumerate(configs, start=1):
                name = config["name"]
                print(f"[{index}/{len(configs)}] {name} ({config['notebook']})", flush=True)
                began = time.time()
                # the key is taken again just before the notebook starts: the source may be edited during a run
                outcome = run_experiment(config, force=force)
                if outcome.status != "skipped":
                    intervals[name] = (began, time.time())
                print(f"[{index}/{len(configs)}] {name}: {outcome.status} in {outcome.seconds:.1f} s", flush=True)
                if outcome.error:
                    print(outcome.error, file=sys.stderr, flush=True)
                outcomes.append(outcome)
        finally:
            # the kernel's torch uses every core unless told otherwise
            threads = int(os.environ.get("OMP_NUM_THREADS") or _cpu_count())
            write_schedules(configs, intervals, set(intervals), jobs=1, threads=threads)
    return outcomes
