"""Running one experiment's notebook with papermill: execution, failure records, stale state."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.progress import ENV as PROGRESS_ENV
from nlilab.results import METRICS, atomic_write_json, executed_notebook, read_json
from nlilab.run import cache
from nlilab.run.cache import CACHE_FILE, cache_key

FAILURE_FILE = "failure.json"
ATTEMPT_FILE = "attempt_key.json"  # the key of the inputs that the folder's partial state belongs to


# ------------------------------------------------------------------------------------------------ execution
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
        from nlilab.report.pages import render_notebook

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
    if not force and cache.is_fresh(config, key):
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
