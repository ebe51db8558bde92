"""Cache keys: what an experiment's result depends on (notebook, params, nlilab source it imports, data, packages, weights)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

from nlilab.data.nli import data_fingerprint
from nlilab.models.resolve import package_version, weights_identity
from nlilab.results import METRICS, executed_notebook, read_json

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CACHE_FILE = "cache_key.json"
VOLATILE_KEYS = ("results_dir", "reports_dir", "notebooks_dir", "output_dir")
# Imports of params that are not followed: every notebook imports params, and params imports every kind's block
# (so that an edit to the prompting code would rerun every fine-tuning experiment). The prompt-file checks only
# validate. The blocks (config modules, schema) do shape a run, but only through the config dict they fill, and the
# key hashes that dict in full (`parameters`): a changed default reruns exactly the experiments that get it; a
# reworded message reruns nothing. A module that reads a block at run time imports it itself and is followed.
VALIDATION_IMPORTS = {"params": {"prompting.prompts", "schema", "data.config", "models.config", "training.config",
                                 "methods.config", "methods.qlora_config", "prompting.config"}}
# Files inside the package that a module reads at run time: part of the source of whatever uses that module.
PACKAGE_DATA = {"prompting.prompts": ("prompting/prompts",)}
# Modules that a module starts as processes (`python -m ...`) rather than imports: as much its source as an import.
STARTED = {"experiments.trained": {"experiments.launched"}}


# ------------------------------------------------------------------------------------------------ cache keys
def module_file(module: str) -> Path | None:
    """The source file of an nlilab module named relative to the package ("experiments.encoder", "__init__")."""
    base = PACKAGE_DIR.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(base: str, names: list[str]) -> set[str]:
    """`from nlilab.<base> import names`: the module itself, and each name that is a submodule of it."""
    found = {base} if base else set()
    found.update(f"{base}.{n}".lstrip(".") for n in names)
    return {m for m in found if module_file(m)}


def _module_imports(module: str) -> set[str]:
    """nlilab modules that `module` imports (relative or absolute), from its source."""
    path = module_file(module)
    if path is None:
        return set()
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "nlilab":
                base = node.module.removeprefix("nlilab").lstrip(".")
            else:
                continue
            found |= _imported(base, [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("nlilab.") for a in node.names if a.name.startswith("nlilab."))
    found = {m for m in found if module_file(m)}
    # a submodule's import runs its packages' __init__ first
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    found |= STARTED.get(module, set())
    return {m for m in found if module_file(m)} - VALIDATION_IMPORTS.get(module, set()) - {module}


def notebook_modules(notebook: Path) -> set[str]:
    """The nlilab modules a notebook uses, closed over their imports."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    names = set()
    # `from nlilab.x import a, b as c` ends at the line's end; only a parenthesized list spans lines
    for base, inside, line in re.findall(r"from nlilab((?:\.\w+)*) import (?:\(([^)]*)\)|([\w \t,]+))", code):
        listed = [n.strip().split(" as ")[0] for n in (inside or line).split(",") if n.strip()]
        names |= _imported(base.lstrip("."), listed)
    names |= {m for m in re.findall(r"nlilab\.([\w.]*\w)", code) if module_file(m)}
    todo = names | {"__init__"}
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
        source.update(module.encode() + b"\0" + module_file(module).read_bytes())
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
