"""Runs a profile's notebooks with papermill, in order, skipping those whose inputs have not changed.

An experiment's cache key hashes everything its result depends on: its notebook, its merged parameters, the
nlilab modules its notebook uses (followed through their imports), and the data's fingerprint. A finished
experiment with the same key is skipped. A failing notebook is recorded (`failure.json`, the error's last lines)
and the others still run; the command then exits non-zero.

Before the first notebook starts, a preflight checks in seconds what this machine must provide (a GPU for
GPU-only settings, the hub for hub models and data) and stops with one message if it cannot. A rerun resumes
what a killed run of the same inputs left (`attempt_key.json` says which inputs that is) and discards the rest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .data import data_fingerprint, ensure_hub_dataset_available
from .errors import NlilabError
from .models import ALIASES, ensure_hub_model_available
from .params import Profile, load_profile, with_output_dirs
from .results import METRICS, atomic_write_json, read_json

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
    }
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
    import papermill as pm

    source = Path(config["notebooks_dir"]) / f"{config['notebook']}.ipynb"
    target = executed_notebook(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(source), str(target),
        parameters={"profile": config["profile"], "experiment": config["name"], "config": config},
        kernel_name=kernel_name(), cwd=str(source.parent), progress_bar=True,
        stdout_file=sys.stdout, stderr_file=sys.stderr,
    )


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
        execute(config)
        metrics = read_json(out / METRICS)
        if not metrics or metrics.get("status") != "ok":
            raise RuntimeError(f"notebook {config['notebook']} finished without writing {out / METRICS}")
    except Exception as exc:  # noqa: BLE001 - any failure of one notebook must not stop the others
        tail = error_tail(exc)
        atomic_write_json(out / FAILURE_FILE, {"experiment": config["name"], "notebook": config["notebook"],
                                               "error": tail, "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        (out / CACHE_FILE).unlink(missing_ok=True)
        return Outcome(config["name"], "failed", time.perf_counter() - started, tail)
    (out / FAILURE_FILE).unlink(missing_ok=True)
    atomic_write_json(out / CACHE_FILE, key)
    return Outcome(config["name"], "ran", time.perf_counter() - started)


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
        checks.append(lambda: _once(checked, ("model", model), lambda: ensure_hub_model_available(model)))
    if config["data"]["source"] == "hub":
        hub_id = config["data"]["hub_id"]
        checks.append(lambda: _once(checked, ("dataset", hub_id), lambda: ensure_hub_dataset_available(hub_id)))
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
                results_dir=None, reports_dir=None, render: bool = True) -> list[Outcome]:
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
    preflight(prof, configs, force)
    outcomes = []
    for index, (name, config) in enumerate(zip(names, configs), start=1):
        print(f"[{index}/{len(names)}] {name} ({config['notebook']})", flush=True)
        # the key is taken again just before the notebook starts: the source may be edited during a long run
        outcome = run_experiment(config, force=force)
        print(f"[{index}/{len(names)}] {name}: {outcome.status} in {outcome.seconds:.1f} s", flush=True)
        if outcome.error:
            print(outcome.error, file=sys.stderr, flush=True)
        outcomes.append(outcome)
    if render:
        from .report import build_report

        any_config = with_output_dirs(prof, names[0], results_dir, reports_dir) if names else None
        if any_config:
            path = build_report(prof, results_dir=any_config["results_dir"], reports_dir=any_config["reports_dir"])
            print(f"report: {path}", flush=True)
    return outcomes
