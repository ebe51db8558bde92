"""Runs a profile's notebooks with papermill, in order, skipping those whose inputs have not changed.

An experiment's cache key hashes everything its result depends on: its notebook, its merged parameters, the
nlilab modules its notebook uses (followed through their imports), and the data's fingerprint. A finished
experiment with the same key is skipped. A failing notebook is recorded (`failure.json`, the error's last lines)
and the others still run; the command then exits non-zero.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .data import data_fingerprint
from .params import Profile, load_profile, with_output_dirs
from .results import METRICS, atomic_write_json, read_json

PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_FILE = "cache_key.json"
FAILURE_FILE = "failure.json"
VOLATILE_KEYS = ("results_dir", "reports_dir", "notebooks_dir", "output_dir")


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
    return {m for m in found if (PACKAGE_DIR / f"{m}.py").is_file()}


def notebook_modules(notebook: Path) -> set[str]:
    """The nlilab modules a notebook uses, closed over their imports."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    names = set(re.findall(r"nlilab\.(\w+)", code))
    for group in re.findall(r"from nlilab import \(?([\w ,\n]+)\)?", code):
        names.update(n.strip().split(" as ")[0] for n in group.split(",") if n.strip())
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


def error_tail(exc: BaseException, lines: int = 12) -> str:
    """The last lines of the error, as a user would want to read them in the report."""
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


def run_experiment(config: dict, force: bool = False) -> Outcome:
    out = Path(config["output_dir"])
    key = cache_key(config)
    if not force and is_fresh(config, key):
        return Outcome(config["name"], "skipped", 0.0)
    started = time.perf_counter()
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
    outcomes = []
    for index, name in enumerate(names, start=1):
        config = with_output_dirs(prof, name, results_dir, reports_dir)
        print(f"[{index}/{len(names)}] {name} ({config['notebook']})", flush=True)
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
