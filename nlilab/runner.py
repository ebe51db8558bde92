"""Runs a profile's notebooks with papermill, in order, skipping those whose inputs have not changed.

An experiment's cache key hashes everything its result depends on: its notebook, its merged parameters, the
nlilab modules its notebook uses (followed through their imports), the data's fingerprint, the versions of the
libraries that compute it and the identity of the model's weights. A finished
experiment with the same key is skipped. A failing notebook is recorded (`failure.json`, the error's last lines)
and the others still run; the command then exits non-zero.

Before the first notebook starts, a preflight checks in seconds what this machine must provide (a GPU for
GPU-only settings, the hub for hub models and data) and stops with one message if it cannot. A rerun resumes
what a killed run of the same inputs left (`attempt_key.json` says which inputs that is) and discards the rest.

Experiments are independent, so on a CPU machine several run at once (`jobs`), each in its own process with a
share of the cores: small models use two cores poorly within one process, and each notebook's start-up (kernel,
imports) is single-threaded. On a GPU they run one at a time. Outcomes and the report do not depend on the order.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .costs import LOCK_ENV, schedules
from .data import data_fingerprint, ensure_hub_dataset_available
from .errors import NlilabError
from .models import ALIASES, ensure_hub_model_available, package_version, weights_identity
from .params import Profile, load_profile, with_output_dirs
from .progress import ENV as PROGRESS_ENV
from .results import METRICS, SCHEDULE, atomic_write_json, read_json

PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_FILE = "cache_key.json"
FAILURE_FILE = "failure.json"
ATTEMPT_FILE = "attempt_key.json"  # the key of the inputs that the folder's partial state belongs to
VOLATILE_KEYS = ("results_dir", "reports_dir", "notebooks_dir", "output_dir")
# Imports that only validate a profile: they may reject it, never change a result. Following them would make every
# notebook depend on every kind's module (params checks prompt files with nlilab.prompting), so that an edit to
# the prompting code would rerun every fine-tuning experiment.
VALIDATION_IMPORTS = {"params": {"prompting"}}
# Files inside the package that a module reads at run time: part of the source of whatever uses that module.
PACKAGE_DATA = {"prompting": ("prompts",)}


# ------------------------------------------------------------------------------------------------ cache keys
def _module_imports(module: str) -> set[str]:
    """nlilab modules that `module` imports (relative or absolute), from its source."""
    path = PACKAGE_DIR / f"{module}.py"
    if not path.is_file():
        return set()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith("nlilab"):
                base = base.removeprefix("nlilab").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # `from . import a, b`
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("nlilab."))
    return {m for m in found if (PACKAGE_DIR / f"{m}.py").is_file()} - VALIDATION_IMPORTS.get(module, set())


def notebook_modules(notebook: Path) -> set[str]:
    """The nlilab modules a notebook uses, closed over their imports."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    names = set(re.findall(r"nlilab\.(\w+)", code))
    # `from nlilab import a, b as c` ends at the line's end; only a parenthesized list spans lines
    for inside, line in re.findall(r"from nlilab import (?:\(([^)]*)\)|([\w \t,]+))", code):
        names.update(n.strip().split(" as ")[0] for n in (inside or line).split(",") if n.strip())
    todo = {n for n in names if (PACKAGE_DIR / f"{n}.py").is_file()} | {"__init__"}
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= _module_imports(module) - seen
    return seen


# The libraries whose version changes what an experiment computes (kernels, defaults, quantization, data
# loading): a new version reruns it.
KEY_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")


def cache_key(config: dict) -> dict:
    notebook = Path(config["notebooks_dir"]) / f"{config['notebook']}.ipynb"
    modules = sorted(notebook_modules(notebook))
    source = hashlib.sha256()
    for module in modules:
        source.update(module.encode() + b"\0" + (PACKAGE_DIR / f"{module}.py").read_bytes())
        for folder in PACKAGE_DATA.get(module, ()):
            for path in sorted((PACKAGE_DIR / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    source.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    params = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    parts = {
        "notebook": hashlib.sha256(notebook.read_bytes()).hexdigest(),
        "parameters": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
        "source": source.hexdigest(),
        "data": data_fingerprint(config["data"], config["seed"]),
        "packages": {name: package_version(name) for name in KEY_PACKAGES},
    }
    if isinstance(config.get("model"), str):  # the weights a model name loads: its files, or its hub revision
        parts["weights"] = weights_identity(config["model"], config.get("revision"))
    return {"key": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), "parts": parts,
            "modules": modules}


def is_fresh(config: dict, key: dict) -> bool:
    out = Path(config["output_dir"])
    stored = read_json(out / CACHE_FILE)
    metrics = read_json(out / METRICS)
    return bool(stored and metrics and stored.get("key") == key["key"] and metrics.get("status") == "ok"
                and executed_notebook(config).is_file())


# ------------------------------------------------------------------------------------------------ execution
def executed_notebook(config: dict) -> Path:
    return Path(config["reports_dir"]) / config["profile"] / "notebooks" / f"{config['name']}.ipynb"


def kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    return "nlilab" if "nlilab" in find_kernel_specs() else "python3"


def _user_error_names(cls) -> set[str]:
    return {cls.__name__}.union(*(_user_error_names(sub) for sub in cls.__subclasses__()))


def error_tail(exc: BaseException, lines: int = 12) -> str:
    """The last lines of the error, as a user would want to read them in the report. An NlilabError raised in
    the notebook (bad input, missing GPU) is its message alone: it names the culprit, a traceback adds nothing."""
    if getattr(exc, "ename", None) in _user_error_names(NlilabError):
        return f"{exc.ename}: {exc.evalue}"
    text = "".join(traceback.format_exception_only(type(exc), exc))
    tb = getattr(exc, "traceback", None)  # papermill's error carries the kernel's traceback
    if tb:
        text = "\n".join(tb) + "\n" + text
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colours from the kernel
    return "\n".join(text.strip().splitlines()[-lines:])


def execute(config: dict) -> None:
    source = Path(config["notebooks_dir"]) / f"{config['notebook']}.ipynb"
    target = executed_notebook(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The kernel inherits the environment: progress as text lines, which a terminal or log file can show.
    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "text"
    try:
        _execute(config, source, target)
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = previous


def _execute(config: dict, source: Path, target: Path) -> None:
    import papermill as pm

    pm.execute_notebook(
        str(source), str(target),
        parameters={"profile": config["profile"], "experiment": config["name"], "config": config},
        kernel_name=kernel_name(), cwd=str(source.parent), progress_bar=True,
        stdout_file=sys.stdout, stderr_file=sys.stderr,
    )


def _render(config: dict) -> None:
    """The executed notebook (finished or failed) to HTML now, while other workers run, rather than all at the
    end. The report build renders whatever is missing, so a failure here costs nothing but time."""
    try:
        from .report import render_notebook

        render_notebook(executed_notebook(config))
    except Exception as exc:  # noqa: BLE001 - rendering is a convenience; the result stands without it
        print(f"rendering {executed_notebook(config)} failed ({type(exc).__name__}: {exc}); the report build "
              "will try again", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    experiment: str
    status: str  # ran | skipped | failed
    seconds: float
    error: str | None = None


def reset_stale_state(out: Path, key: dict, force: bool = False) -> None:
    """Before (re)running: keep what a killed run of the *same* inputs left (finished seeds, the Trainer's
    checkpoints) so the notebook resumes from it; delete what other inputs left, which the notebook would
    otherwise read back as if it were new (everything, with --force). The last metrics.json stays until the new
    one replaces it, so the report can still show it, marked as from an earlier run."""
    previous = read_json(out / ATTEMPT_FILE) or read_json(out / CACHE_FILE)
    if out.is_dir() and (force or not previous or previous.get("key") != key["key"]):
        for entry in out.iterdir():
            if entry.name not in (METRICS, FAILURE_FILE, CACHE_FILE, ATTEMPT_FILE):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    # Until the notebook finishes, there is no cache key: a run killed now is never taken for a fresh one.
    (out / CACHE_FILE).unlink(missing_ok=True)
    atomic_write_json(out / ATTEMPT_FILE, key)


def run_experiment(config: dict, force: bool = False, key: dict | None = None) -> Outcome:
    out = Path(config["output_dir"])
    key = key or cache_key(config)
    if not force and is_fresh(config, key):
        return Outcome(config["name"], "skipped", 0.0)
    started = time.perf_counter()
    reset_stale_state(out, key, force)
    try:
        try:
            execute(config)
        finally:
            _render(config)
        metrics = read_json(out / METRICS)
        if not metrics or metrics.get("status") != "ok":
            raise RuntimeError(f"notebook {config['notebook']} finished without writing {out / METRICS}")
    except Exception as exc:  # noqa: BLE001 - any failure of one notebook must not stop the others
        tail = error_tail(exc)
        atomic_write_json(out / FAILURE_FILE, {"experiment": config["name"], "notebook": config["notebook"],
                                               "error": tail, "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        (out / CACHE_FILE).unlink(missing_ok=True)
        return Outcome(config["name"], "failed", time.perf_counter() - started, tail)
    seconds = time.perf_counter() - started
    (out / FAILURE_FILE).unlink(missing_ok=True)
    atomic_write_json(out / CACHE_FILE, {**key, "seconds": round(seconds, 1)})
    return Outcome(config["name"], "ran", seconds)


# ------------------------------------------------------------------------------------------------ preflight
def _once(checked: dict, what: tuple, check) -> None:
    """Run `check` once per hub id and run: each probe of an unreachable hub may wait for a network timeout."""
    if what not in checked:
        try:
            check()
            checked[what] = None
        except NlilabError as exc:
            checked[what] = exc
    if checked[what] is not None:
        raise checked[what]


def environment_problems(config: dict, checked: dict | None = None) -> list[str]:
    """What this machine cannot give the experiment: a GPU-only setting without a GPU, a hub model or dataset
    neither cached nor reachable. Such settings are refused, never silently changed."""
    checked = {} if checked is None else checked
    checks = []
    if config["kind"] != "data" and (config.get("device") == "cuda" or config.get("precision", "fp32") != "fp32"):
        from .training import resolve_device  # imports torch: only when a GPU may be needed

        checks.append(lambda: resolve_device(config))
    model = config.get("model")
    # params validation left three kinds of name: an alias, an existing folder, or a hub id
    if isinstance(model, str) and model not in ALIASES and not Path(model).expanduser().is_dir():
        revision = config.get("revision")
        checks.append(lambda: _once(checked, ("model", model, revision),
                                    lambda: ensure_hub_model_available(model, revision)))
    if config["data"]["source"] == "hub":
        hub_id = config["data"]["hub_id"]
        data_revision = config["data"].get("revision")
        checks.append(lambda: _once(checked, ("dataset", hub_id, data_revision),
                                    lambda: ensure_hub_dataset_available(hub_id, data_revision)))
    problems = []
    for check in checks:
        try:
            check()
        except NlilabError as exc:
            problems.append(str(exc))
    return problems


def preflight(prof: Profile, configs: list[dict], force: bool = False) -> dict[str, dict]:
    """Before the first notebook starts, check in seconds what can be checked: the data files (hashed for the
    cache keys) and, for each experiment that will run, what it needs from this machine. One message lists
    every problem; returns the cache keys by experiment."""
    keys, problems, checked = {}, {}, {}
    for config in configs:
        try:
            keys[config["name"]] = key = cache_key(config)
            found = environment_problems(config, checked) if force or not is_fresh(config, key) else []
        except NlilabError as exc:
            found = [str(exc)]
        for message in found:
            problems.setdefault(message, []).append(config["name"])
    if problems:
        lines = [f"  experiments {', '.join(names)}: {message}" for message, names in problems.items()]
        failing = {name for names in problems.values() for name in names}
        raise NlilabError(f"{prof.path}: nothing was run; {len(failing)} experiment(s) cannot run on this "
                          "machine:\n" + "\n".join(lines))
    return keys


def run_profile(profile: str | Profile, force: bool = False, only: list[str] | None = None,
                results_dir=None, reports_dir=None, render: bool = True, jobs: int | str = "auto") -> list[Outcome]:
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    names = list(prof.experiments)
    if only:
        unknown = [n for n in only if n not in prof.experiments]
        if unknown:
            from .errors import ParamsError

            raise ParamsError(f"{prof.path}: --only names unknown experiment(s) {', '.join(unknown)}; "
                              f"the profile has {', '.join(names)}")
        names = [n for n in names if n in only]
    configs = [with_output_dirs(prof, name, results_dir, reports_dir) for name in names]
    keys = preflight(prof, configs, force)
    pending = [c for c in configs if force or not is_fresh(c, keys[c["name"]])]
    workers = resolve_jobs(jobs, pending)
    if workers > 1:
        outcomes = run_parallel(configs, pending, workers, force)
    else:
        outcomes = run_sequential(configs, force)
    if render and names:
        from .report import build_report

        path = build_report(prof, results_dir=configs[0]["results_dir"], reports_dir=configs[0]["reports_dir"])
        print(f"report: {path}", flush=True)
    return outcomes


def run_sequential(configs: list[dict], force: bool) -> list[Outcome]:
    """One experiment after the other in this process; papermill's bar and the notebook's output stream here."""
    outcomes, intervals = [], {}
    with _lock_folder(configs):
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


# ------------------------------------------------------------------------------------------------ schedule
@contextmanager
def _lock_folder(configs: list[dict]):
    """While experiments run, NLILAB_LOCK_DIR names nlilab.costs' lock folder explicitly (the user's own, or the
    machine-wide default), so every worker and kernel of this run shares one timing lock with every other nlilab
    process on the machine: a timing window then pauses whatever else of nlilab runs, whichever profile or
    results folder it writes to."""
    from .costs import lock_dir

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
    from .training import resolve_device  # the one place that says what 'auto' means on this machine

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
    with _lock_folder(configs):
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
