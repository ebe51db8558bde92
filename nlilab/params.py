"""Profiles: one YAML file per profile, validated completely before anything runs.

A profile has a `shared` block (data, seed, device, output folders) and an ordered `experiments` block. Each
experiment names its notebook; the notebook decides which schema its block follows. Loading merges `shared`
into every experiment, fills defaults, and reports *every* problem at once as
`<file>: <key path>: expected <what>, got <value>`.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from nlilab.errors import ParamsError

MISSING = object()
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MNLI_DIR_ENV = "NLILAB_MNLI_DIR"


# --------------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Field:
    """One key of a profile: its type, default and constraint."""

    kind: str  # int | float | str | bool | list | section
    default: Any = MISSING
    expect: str = ""  # human words for the expectation, used in error messages
    check: Callable[[Any], bool] | None = None
    choices: tuple | None = None
    nullable: bool = False
    items: "Field | None" = None
    fields: dict | None = None
    convert: Callable[[Any], Any] | None = None  # applied to a valid value (e.g. a row count to int)

    def describe(self) -> str:
        if self.expect:
            return self.expect
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "list": "a list", "section": "a mapping"}[self.kind]


def integer(default=MISSING, minimum=None, nullable=False):
    expect = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    check = (lambda v: v >= minimum) if minimum is not None else None
    return Field("int", default, expect, check, nullable=nullable)


def number(default=MISSING, minimum=None, positive=False, maximum=None, nullable=False):
    if positive:
        expect, check = "a positive number", (lambda v: v > 0)
    elif minimum is not None and maximum is not None:
        expect, check = f"a number in [{minimum}, {maximum}]", (lambda v: minimum <= v <= maximum)
    elif minimum is not None:
        expect, check = f"a number >= {minimum}", (lambda v: v >= minimum)
    else:
        expect, check = "a number", None
    return Field("float", default, expect, check, nullable=nullable)


def string(default=MISSING, choices=None, nullable=False, expect=""):
    return Field("str", default, expect, choices=tuple(choices) if choices else None, nullable=nullable)


def flag(default=MISSING):
    return Field("bool", default)


def listof(item: Field, default=MISSING, nonempty=True, nullable=False):
    expect = ("a non-empty list" if nonempty else "a list") + ", each " + item.describe()
    check = (lambda v: len(v) > 0) if nonempty else None
    return Field("list", default, expect, check, items=item, nullable=nullable)


def revision(what: str) -> Field:
    return string(None, nullable=True, expect=f"a {what} revision (a commit hash)")


def _fraction_or_rows(value) -> bool:
    return 0 < value < 1 or (value >= 1 and float(value).is_integer())


def fraction_or_count(default) -> Field:
    """A share (0 < v < 1) or a whole number of rows (v >= 1), as the held-out validation split's size."""
    return Field("float", default, "a fraction in (0, 1) or a whole number of rows >= 1", _fraction_or_rows,
                 convert=lambda v: v if v < 1 else int(v))


def section(nullable=False, **fields):
    return Field("section", {} if not nullable else None, fields=fields, nullable=nullable)


TRAIN_FIELDS = section(
    epochs=number(3, positive=True),
    max_steps=integer(None, minimum=1, nullable=True),
    batch_size=integer(16, minimum=1),
    eval_batch_size=integer(64, minimum=1),
    learning_rate=number(5e-5, positive=True),
    weight_decay=number(0.01, minimum=0),
    warmup_ratio=number(0.06, minimum=0, maximum=1),
    max_length=integer(128, minimum=8),
    gradient_accumulation_steps=integer(1, minimum=1),
    logging_steps=integer(10, minimum=1),
    save_total_limit=integer(1, minimum=1),
    group_by_length=flag(True),
    # the exclusive timing window's optimizer steps (nlilab.training.costs.training_window), once per experiment; 0: none
    window_steps=integer(12, minimum=0),
)

SHARED_FIELDS = {
    "seed": integer(0, minimum=0),
    "device": string("auto", choices=("auto", "cpu", "cuda")),
    "precision": string("fp32", choices=("fp32", "bf16", "fp16")),
    "data": section(
        source=string("bundled", choices=("bundled", "local", "hub")),
        local_dir=string(None, nullable=True, expect="a folder path"),
        hub_id=string("nyu-mll/multi_nli"),
        revision=revision("hub dataset"),  # source 'hub' only; null takes the hub's latest
        # The validation split held out of the labeled training rows: everything chosen by looking at scores
        # is chosen on it; the dev sets stay test sets.
        validation_size=fraction_or_count(0.1),
        train_limit=integer(None, minimum=1, nullable=True),
        eval_limit=integer(None, minimum=1, nullable=True),
    ),
    "results_dir": string("results"),
    "reports_dir": string("reports"),
    "notebooks_dir": string("notebooks"),
}

ENCODER_METHODS = ("full", "top_layers", "lora", "ptuning", "prefix")

KIND_FIELDS: dict[str, dict[str, Field]] = {
    "data": {"examples": integer(5, minimum=0)},
    "encoder": {
        "model": string(expect="a model alias, hub id (org/name) or local folder"),
        "revision": revision("hub model"),  # hub ids only; null takes the hub's latest
        "method": string("full", choices=ENCODER_METHODS),
        # what the head reads: auto = the model folder's own choice (mean for sentence-transformers models such
        # as MiniLM, the architecture's [CLS]/first-token head otherwise); see nlilab/methods/pooling.py
        "pooling": string("auto", choices=("auto", "cls", "mean")),
        "seeds": listof(integer(minimum=0), default=None, nullable=True),
        # which seeds keep their trained model folder: a full fine-tune of roberta-large is 1.4 GB a seed
        "keep_models": string("first", choices=("first", "all", "none")),
        "train": TRAIN_FIELDS,
        "top_layers": section(k=integer(2, minimum=0)),
        "lora": section(
            r=integer(8, minimum=1),
            alpha=number(16, positive=True),
            dropout=number(0.1, minimum=0, maximum=1),
            target_modules=listof(string(), default=["query", "value"]),
        ),
        "ptuning": section(num_virtual_tokens=integer(20, minimum=1),
                           encoder_hidden_size=integer(128, minimum=1)),
        # No reparametrisation MLP by default: on MiniLM it collapsed to one class at learning rates >= 2e-3.
        "prefix": section(num_virtual_tokens=integer(16, minimum=1), projection=flag(False),
                          projection_hidden_size=integer(128, minimum=1)),
        "sweep": section(nullable=True, param=string("learning_rate", choices=("learning_rate",)),
                         values=listof(number(positive=True))),
    },
    # Zero-/one-shot prompting of a causal LM (nlilab.prompting). The prompt itself is a file in
    # nlilab/prompts/; `prompt` names it and may override its fields (null keeps the file's value).
    "prompting": {
        "model": string(expect="a model alias, hub id (org/name) or local folder"),
        "revision": revision("hub model"),  # hub ids only; null takes the hub's latest
        "mode": string("zero_shot", choices=("zero_shot", "one_shot")),
        "scoring": string("loglik", choices=("loglik", "generate")),
        "prompt": section(
            name=string("harness_mnli", expect="a prompt name (nlilab/prompts/<name>.yaml) or a YAML file"),
            version=integer(None, minimum=1, nullable=True),
            title=string(None, nullable=True),
            template=string(None, nullable=True),
            system=string(None, nullable=True),
            chat_template=Field("bool", None, nullable=True),
            fewshot_separator=string(None, nullable=True),
            hypothesis_period=Field("bool", None, nullable=True),
            add_special_tokens=Field("bool", None, nullable=True),
            label_words=section(nullable=True, entailment=string(None, nullable=True),
                                neutral=string(None, nullable=True), contradiction=string(None, nullable=True)),
        ),
        "seeds": listof(integer(minimum=0), default=None, nullable=True),
        "rotate_demo_labels": flag(True),
        "calibration": string("none", choices=("none", "contextual")),
        "content_free_inputs": listof(string(), default=["N/A"]),
        "batch_size": integer(16, minimum=1),
        "max_length": integer(2048, minimum=16),
        "max_new_tokens": integer(5, minimum=1),
    },
    # A decoder LM as a sequence classifier: 4-bit base, LoRA (or bottleneck) adapters, a linear head over the
    # last non-pad token (nlilab.methods.qlora).
    "qlora": {
        "model": string(expect="a model alias, hub id (org/name) or local folder"),
        "revision": revision("hub model"),  # hub ids only; null takes the hub's latest
        "adapter": string("lora", choices=("lora", "bottleneck")),
        "quantization": string("nf4", choices=("nf4", "int8", "none")),
        # Where bitsandbytes cannot quantize on this machine: true falls back to unquantized weights and records
        # it (quantization: none + a note); false stops with an error.
        "fallback": flag(False),
        "compute_dtype": string("bf16", choices=("bf16", "fp16", "fp32")),
        "double_quant": flag(True),
        # The input embedding table in NF4 too (QLoRA leaves it in 16 bits); needs quantization: nf4.
        "quantize_embeddings": flag(False),
        "gradient_checkpointing": flag(False),
        "input_template": string("Premise: {premise}\nHypothesis: {hypothesis}"),
        "seeds": listof(integer(minimum=0), default=None, nullable=True),
        "keep_models": string("first", choices=("first", "all", "none")),
        "train": TRAIN_FIELDS,
        "lora": section(
            r=integer(16, minimum=1),
            alpha=number(32, positive=True),
            dropout=number(0.05, minimum=0, maximum=1),
            target_modules=listof(string(), default=["q_proj", "k_proj", "v_proj", "o_proj"]),
        ),
        "bottleneck": section(size=integer(64, minimum=1)),
    },
}

# Which schema each notebook's block follows. A new notebook registers here.
NOTEBOOK_KINDS: dict[str, str] = {
    "00_data": "data",
    "10_full_finetune": "encoder",
    "11_top_layers": "encoder",
    "12_lora": "encoder",
    "13_lora_sweep": "encoder",
    "14_ptuning": "encoder",
    "15_deep_prompts": "encoder",
    "20_prompting": "prompting",
    "21_qlora": "qlora",
}

TOP_FIELDS = {"description": string(""), "shared": None, "experiments": None}


# ------------------------------------------------------------------------------------------------ validation
def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _coerce(value: Any, spec: Field):
    """Return (value, ok). YAML reads `5e-5` as a string, so numeric strings are accepted for numbers."""
    if spec.kind == "int":
        return value, isinstance(value, int) and not isinstance(value, bool)
    if spec.kind == "float":
        if isinstance(value, str):
            try:
                return float(value), True
            except ValueError:
                return value, False
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value) if ok else value), ok
    if spec.kind == "str":
        return value, isinstance(value, str) and value != ""
    if spec.kind == "bool":
        return value, isinstance(value, bool)
    if spec.kind == "list":
        return value, isinstance(value, list)
    return value, isinstance(value, dict)


def _validate(value, spec: Field, path: str, errors: list[str], fill: bool):
    if value is None and spec.nullable:
        return None
    value, ok = _coerce(value, spec)
    if not ok or (spec.choices and value not in spec.choices) or (spec.check and not spec.check(value)):
        errors.append(f"{path}: expected {spec.describe()}, got {_fmt(value)}")
        return value
    if spec.kind == "list" and spec.items is not None:
        return [_validate(v, spec.items, f"{path}[{i}]", errors, fill) for i, v in enumerate(value)]
    if spec.kind == "section":
        return _validate_mapping(value, spec.fields, path, errors, fill)
    return spec.convert(value) if spec.convert else value


def _suggest(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _validate_mapping(value: dict, fields: dict, path: str, errors: list[str], fill: bool) -> dict:
    out = {}
    prefix = f"{path}." if path else ""
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key{_suggest(str(key), fields)}; "
                          f"expected one of {', '.join(sorted(fields))}")
            continue
        out[key] = _validate(item, fields[key], f"{prefix}{key}", errors, fill)
    if fill:
        for key, spec in fields.items():
            if key in out:
                continue
            if spec.kind == "section" and not spec.nullable:
                out[key] = _validate_mapping({}, spec.fields, f"{prefix}{key}", errors, fill)
            elif spec.default is MISSING:
                errors.append(f"{prefix}{key}: missing; expected {spec.describe()}")
            else:
                out[key] = copy.deepcopy(spec.default)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------------- loading
@dataclass
class Profile:
    """A validated profile: `experiments` maps each name (in run order) to its complete, merged config."""

    name: str
    path: Path
    root: Path
    description: str
    experiments: dict[str, dict] = field(default_factory=dict)
    # what is allowed but weakens reproducibility (a hub model or dataset not pinned to a commit)
    warnings: list[str] = field(default_factory=list)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys: a copied experiment block left under its old name
    would replace the first one without a word. This loader refuses duplicates instead."""


def _no_duplicate_keys(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` overrides are legitimate
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: let the constructor report it
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first written on line {first + 1}); each key may appear once "
                "per block", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        what = "" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error: "
        raise ParamsError(f"{path}: {where}{what}{problem}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping with 'shared' and 'experiments', got {_fmt(raw)}")
    return raw


def resolve_profile_path(profile: str | os.PathLike) -> Path:
    """`cpu` -> <project>/params/cpu.yaml; a path is taken as it is."""
    text = str(profile)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text).resolve()
    return PROJECT_ROOT / "params" / f"{text}.yaml"


def _root_for(path: Path) -> Path:
    # Relative paths in a profile resolve against the project folder that holds its params/ folder.
    return path.parent.parent if path.parent.name == "params" else path.parent


def _notebooks_root(path: Path) -> Path:
    """Where the default `notebooks_dir` resolves. The notebooks belong to nlilab, not to the profile: a profile
    kept elsewhere (in a home folder, beside its data) runs the project's notebooks. A profile inside a params/
    folder keeps that folder's project, so that a copy of the project (a test's snapshot) runs its own."""
    return path.parent.parent if path.parent.name == "params" else PROJECT_ROOT


def load_profile(profile: str | os.PathLike) -> Profile:
    """Load and validate a profile completely; raise ParamsError listing every problem."""
    from nlilab.models.resolve import (
        check_model_name,  # local import: models imports params' constants
    )

    path = resolve_profile_path(profile)
    raw = _read_yaml(path)
    errors: list[str] = []
    for key in raw:
        if key not in TOP_FIELDS:
            errors.append(f"{key}: unknown top-level key{_suggest(str(key), TOP_FIELDS)}; "
                          "expected description, shared, experiments")
    shared_raw = raw.get("shared") or {}
    if not isinstance(shared_raw, dict):
        errors.append(f"shared: expected a mapping, got {_fmt(shared_raw)}")
        shared_raw = {}
    shared = _validate_mapping(shared_raw, SHARED_FIELDS, "shared", errors, fill=False)
    experiments_raw = raw.get("experiments")
    if not isinstance(experiments_raw, dict) or not experiments_raw:
        errors.append(f"experiments: expected a non-empty mapping of experiment name to block, "
                      f"got {_fmt(experiments_raw)}")
        experiments_raw = {}
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        errors.append(f"description: expected a string, got {_fmt(description)}")
        description = None
    prof = Profile(path.stem, path, _root_for(path), description or "")
    for name, block in experiments_raw.items():
        if not EXPERIMENT_NAME.fullmatch(str(name)):
            errors.append(f"experiments.{name}: expected an experiment name of letters, digits, '_' and '-' "
                          "(it names the experiment's results folder)")
            continue
        config = _load_experiment(str(name), block, shared, path, errors)
        if config is not None:
            prof.experiments[str(name)] = config
    for name, config in prof.experiments.items():
        errors.extend(_cross_checks(name, config, check_model_name))
        prof.warnings.extend(_unpinned(name, config))
    errors = _attribute_to_shared(errors, experiments_raw, shared_raw)
    if errors:
        raise ParamsError(f"{path}: {len(errors)} problem(s):\n" + "\n".join(f"  {path.name}: {e}" for e in errors))
    prof.warnings = _attribute_to_shared(prof.warnings, experiments_raw, shared_raw)  # once each, as errors
    return prof


EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _is_set(mapping, dotted: str) -> bool:
    """Whether a key path such as `train.learning_rate` or `seeds[0]` is written in `mapping`."""
    for part in re.sub(r"\[\d+\]", "", dotted).split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return False
        mapping = mapping[part]
    return True


def _attribute_to_shared(errors: list[str], experiments_raw: dict, shared_raw: dict) -> list[str]:
    """A bad value written once in `shared` is reported once, as `shared.<key>`, not again for every experiment
    that inherits it."""
    out = []
    for error in errors:
        found = re.match(r"experiments\.([A-Za-z0-9_-]+)\.([\w.\[\]]+): (.*)", error, re.S)
        if found:
            name, key, rest = found.groups()
            block = experiments_raw.get(name)
            if not _is_set(block if isinstance(block, dict) else {}, key) and _is_set(shared_raw, key):
                error = f"shared.{key}: {rest}"
        if error not in out:
            out.append(error)
    return out


def _load_experiment(name: str, block, shared: dict, profile_path: Path, errors: list[str]) -> dict | None:
    path = f"experiments.{name}"
    if not isinstance(block, dict):
        errors.append(f"{path}: expected a mapping with at least 'notebook', got {_fmt(block)}")
        return None
    notebook = block.get("notebook")
    if notebook not in NOTEBOOK_KINDS:
        errors.append(f"{path}.notebook: expected one of {', '.join(NOTEBOOK_KINDS)}, got {_fmt(notebook)}")
        return None
    kind = NOTEBOOK_KINDS[notebook]
    fields = {**SHARED_FIELDS, **KIND_FIELDS[kind]}
    body = {k: v for k, v in block.items() if k != "notebook"}
    _validate_mapping(body, fields, path, errors, fill=False)  # errors named where the user wrote them
    merged = deep_merge(shared, body)
    local: list[str] = []
    config = _validate_mapping(merged, fields, path, local, fill=True)
    errors.extend(e for e in local if e not in errors)
    config.update(name=name, notebook=notebook, kind=kind)
    # A path the profile writes is the writer's: relative to the profile's project, or to its own folder when it
    # sits elsewhere, since a profile kept beside its data names that data relative to itself. The notebooks,
    # unless the profile names its own, are nlilab's.
    root = _root_for(profile_path)
    for key in ("results_dir", "reports_dir", "notebooks_dir"):
        if isinstance(config.get(key), str):
            unwritten_notebooks = key == "notebooks_dir" and key not in shared and key not in body
            base = _notebooks_root(profile_path) if unwritten_notebooks else root
            config[key] = str((base / config[key]).resolve())
    if isinstance(config.get("data", {}).get("local_dir"), str):
        config["data"]["local_dir"] = str((root / config["data"]["local_dir"]).resolve())
    return config


def _cross_checks(name: str, config: dict, check_model_name) -> list[str]:
    """Checks that span keys or look at the machine's files (never the network)."""
    path = f"experiments.{name}"
    errors = []
    nb = Path(config["notebooks_dir"]) / f"{config['notebook']}.ipynb"
    if not nb.is_file():
        errors.append(f"{path}.notebook: notebook file {nb} does not exist")
    data = config["data"]
    if data["source"] == "local":
        folder = data["local_dir"] or os.environ.get(MNLI_DIR_ENV)
        if not folder:
            errors.append(f"{path}.data.source: 'local' needs a folder: set data.local_dir or "
                          f"${MNLI_DIR_ENV}; neither is set")
        elif not Path(folder).is_dir():
            where = f"{path}.data.local_dir" if data["local_dir"] else f"${MNLI_DIR_ENV} (data.source 'local')"
            errors.append(f"{where}: expected an existing folder, got {folder!r}")
    if config["device"] == "cpu" and config["precision"] == "fp16":
        errors.append(f"{path}.precision: fp16 needs a GPU but device is 'cpu'; use fp32 or bf16")
    if "model" in config and isinstance(config["model"], str):
        problem = check_model_name(config["model"])
        if problem:
            errors.append(f"{path}.model: {problem}")
        else:
            errors.extend(_model_checks(path, config))
    if data["revision"] is not None and data["source"] != "hub":
        errors.append(f"{path}.data.revision: a revision pins a hub dataset, but data.source is "
                      f"{data['source']!r}; remove it")
    errors.extend(_kind_checks(path, config))
    return errors


def _model_checks(path: str, config: dict) -> list[str]:
    """Checks of a model the machine holds: a revision only for hub ids; LoRA targets it has."""
    from nlilab.models.resolve import model_source

    source = model_source(config["model"])
    if source != "hub" and config["revision"] is not None:
        what = "an embedded alias" if source == "alias" else "a local folder"
        return [f"{path}.revision: a revision pins a hub model, but {config['model']!r} is {what}; remove it"]
    uses_lora = config.get("method") == "lora" or config.get("adapter") == "lora"
    if source != "hub" and uses_lora and "lora" in config:
        return _target_module_checks(path, config)
    return []


def _target_module_checks(path: str, config: dict) -> list[str]:
    """PEFT fails only when the run builds the model if a target names no module of it. A local model's
    classifier is built on the meta device here (seconds, no weights) and each target matched as PEFT
    matches a list: a module's dotted name equal to it or ending with '.' + it."""
    from nlilab.models.resolve import adaptable_modules

    try:
        names = adaptable_modules(config["model"])
    except Exception as exc:  # noqa: BLE001 - any failure to read the model is the user's to see
        return [f"{path}.model: cannot build {config['model']!r} to check lora.target_modules: "
                f"{type(exc).__name__}: {exc}"]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    targets = config["lora"]["target_modules"]
    errors = []
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        if isinstance(target, str) and not any(n == target or n.endswith("." + target) for n in names):
            errors.append(f"{path}.lora.target_modules[{i}]: expected a module of {config['model']!r} that LoRA "
                          f"can adapt, got {_fmt(target)}{_suggest(target, leaves)}; it has "
                          f"{', '.join(leaves)}")
    return errors


def _unpinned(name: str, config: dict) -> list[str]:
    """Hub models and datasets not pinned to a commit: allowed (the hub's latest), but a rerun may differ."""
    from nlilab.models.resolve import is_pinned, model_source

    path, found = f"experiments.{name}", []
    model = config.get("model")
    if isinstance(model, str) and model_source(model) == "hub" and not is_pinned(config["revision"]):
        found.append(f"{path}.revision: model {model!r} is not pinned to a commit (got {_fmt(config['revision'])})"
                     "; a rerun may load other weights: set revision to the hub commit's 40-character hash")
    data = config["data"]
    if data["source"] == "hub" and not is_pinned(data["revision"]):
        found.append(f"{path}.data.revision: dataset {data['hub_id']!r} is not pinned to a commit (got "
                     f"{_fmt(data['revision'])}); set data.revision to the hub commit's 40-character hash")
    return found


# Each encoder notebook explains one method; a block pairing it with another would mislabel its results.
NOTEBOOK_METHODS = {"10_full_finetune": "full", "11_top_layers": "top_layers", "12_lora": "lora",
                    "13_lora_sweep": "lora", "14_ptuning": "ptuning", "15_deep_prompts": "prefix"}


def _encoder_checks(path: str, config: dict) -> list[str]:
    errors = []
    expected = NOTEBOOK_METHODS.get(config["notebook"])
    if expected and config["method"] != expected:
        errors.append(f"{path}.method: notebook {config['notebook']} runs method '{expected}', "
                      f"got {config['method']!r}")
    if config["method"] not in ("lora",) and config.get("sweep"):
        errors.append(f"{path}.sweep: a learning-rate sweep is only supported for method 'lora'")
    if config["notebook"] == "13_lora_sweep" and not config.get("sweep"):
        errors.append(f"{path}.sweep: notebook 13_lora_sweep needs a sweep block "
                      "(sweep: {param: learning_rate, values: [...]})")
    values = (config.get("sweep") or {}).get("values") or []
    if len(set(values)) != len(values):
        errors.append(f"{path}.sweep.values: expected distinct values, got {values}")
    return errors


def _kind_checks(path: str, config: dict) -> list[str]:
    errors = []
    seeds = config.get("seeds")  # every kind that repeats runs takes a list of seeds
    if seeds is not None and len(set(seeds)) != len(seeds):
        errors.append(f"{path}.seeds: expected distinct seeds, got {seeds}")
    if config["kind"] == "encoder":
        errors.extend(_encoder_checks(path, config))
    if config["kind"] == "prompting":
        errors.extend(_prompting_checks(path, config))
    if config["kind"] == "qlora":
        errors.extend(_qlora_checks(path, config))
    return errors


def _prompting_checks(path: str, config: dict) -> list[str]:
    from nlilab.prompting.prompts import (
        load_prompt,  # local import: prompting imports params' neighbours
    )

    errors = []
    if config.get("seeds") and config["mode"] == "zero_shot":
        errors.append(f"{path}.seeds: zero-shot scoring draws nothing at random, so it runs once; seeds apply "
                      "to mode one_shot (each seed draws its own demonstrations)")
    if config["calibration"] == "contextual" and config["scoring"] != "loglik":
        errors.append(f"{path}.calibration: contextual calibration needs label scores (scoring: loglik)")
    prompt = config.get("prompt") or {}
    if isinstance(prompt.get("name"), str):
        try:
            load_prompt(prompt["name"], {k: v for k, v in prompt.items() if k != "name"})
        except ParamsError as exc:
            errors.extend(f"{path}.prompt: {line}" for line in str(exc).splitlines())
    return errors


def _qlora_checks(path: str, config: dict) -> list[str]:
    import string as _string

    errors = []
    if config["device"] == "cpu" and config["compute_dtype"] == "fp16":
        errors.append(f"{path}.compute_dtype: fp16 needs a GPU but device is 'cpu'; use bf16 or fp32")
    template = config.get("input_template")
    if isinstance(template, str):
        try:
            names = {f for _, f, _, _ in _string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            names = None
            errors.append(f"{path}.input_template: not a valid format string ({exc})")
        if names is not None and names != {"premise", "hypothesis"}:
            errors.append(f"{path}.input_template: expected exactly the placeholders {{premise}} and "
                          f"{{hypothesis}}, got {sorted(names)}")
    if config.get("quantize_embeddings") and config["quantization"] != "nf4":
        errors.append(f"{path}.quantize_embeddings: only with quantization: nf4 (got "
                      f"'{config['quantization']}'); set it to false")
    if config["adapter"] == "lora" and not config["lora"]["target_modules"]:
        errors.append(f"{path}.lora.target_modules: expected at least one module name")
    return errors


def experiment_seeds(config: dict) -> list[int]:
    return list(config.get("seeds") or [config["seed"]])


def load_experiment(profile: str, experiment: str, config: dict | None = None) -> dict:
    """What a notebook calls: the runner passes `config`; standalone, the profile file is read."""
    if config:
        return config
    prof = load_profile(profile)
    if experiment not in prof.experiments:
        raise ParamsError(f"{prof.path}: no experiment '{experiment}'{_suggest(experiment, prof.experiments)}; "
                          f"it has {', '.join(prof.experiments)}")
    return with_output_dirs(prof, experiment)


def with_output_dirs(prof: Profile, experiment: str, results_dir=None, reports_dir=None) -> dict:
    """The experiment's config plus its output folder `<results_dir>/<profile>/<experiment>`."""
    config = copy.deepcopy(prof.experiments[experiment])
    config["profile"] = prof.name
    if results_dir:
        config["results_dir"] = str(Path(results_dir).resolve())
    if reports_dir:
        config["reports_dir"] = str(Path(reports_dir).resolve())
    config["output_dir"] = str(Path(config["results_dir"]) / prof.name / experiment)
    return config
