"""Profiles: one YAML file per profile, validated completely before anything runs.

A profile has a `shared` block (data, seed, device, output folders) and an ordered `experiments` block. Each
experiment names its notebook; the notebook decides which kind of block it is. Each block is a pydantic model next to
the code that reads it (see KINDS); this module reads the YAML, merges `shared` into every experiment, validates,
and hands the rest of the code plain dicts with every default filled. It reports *every* problem at once as
`<file>: <key path>: expected <what>, got <value>`, then checks what spans keys or looks at the machine's files.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from nlilab.data.config import DataConfig, DataExperiment
from nlilab.data.nli import MNLI_DIR_ENV
from nlilab.errors import ParamsError
from nlilab.methods.config import EncoderExperiment
from nlilab.methods.qlora_config import QLoraExperiment
from nlilab.models.resolve import check_model_name, is_pinned, model_source
from nlilab.prompting.config import PromptingExperiment
from nlilab.prompting.prompts import load_prompt
from nlilab.schema import Block, Integer, Text, expected, field_at, keys_at
from nlilab.training.config import LaunchConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------- schema
class Shared(Block):
    """The `shared:` block, merged into every experiment (a key the experiment writes itself wins)."""

    seed: Integer = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 where the GPU or CPU computes it natively, else fp16 (GPU) or fp32 (nlilab.training.precision)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    data: DataConfig = Field(default_factory=DataConfig)
    # How many processes train one experiment together, data-parallel (nlilab.training.distributed): the kinds
    # that train (TRAINED_KINDS) only. A config holds both keys only where processes is above 1 (settle_processes).
    processes: Integer = Field(1, ge=1)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    results_dir: Text = "results"
    reports_dir: Text = "reports"
    notebooks_dir: Text = "notebooks"


# Each kind of experiment's own block; an experiment's config is that block and the shared keys.
KINDS: dict[str, type[Block]] = {"data": DataExperiment, "encoder": EncoderExperiment,
                                 "prompting": PromptingExperiment, "qlora": QLoraExperiment}
SCHEMAS: dict[str, type[Block]] = {kind: create_model(f"{kind}_experiment", __base__=(block, Shared))
                                   for kind, block in KINDS.items()}

# Which kind each notebook's block is. A new notebook registers here.
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

TOP_KEYS = ("description", "shared", "experiments")
TRAINED_KINDS = ("encoder", "qlora")  # the kinds that train, alone or in several processes
SEVERAL_PROCESSES = ("processes", "launch")  # the keys of a multi-process run


# ------------------------------------------------------------------------------------------------ validation
def _fmt(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_path(path: str, loc) -> str:
    """experiments.ft + ('train', 'batch_size') -> experiments.ft.train.batch_size; + ('seeds', 1) -> ...seeds[1]."""
    return path + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _problems(exc: ValidationError, schema: type[BaseModel], path: str) -> list[str]:
    """pydantic's errors in the profile's words: `<key path>: expected <what>, got <value>`."""
    out = []
    for error in exc.errors():
        loc = error["loc"]
        if error["type"] in ("extra_forbidden", "invalid_key"):  # invalid: not text (YAML reads `1:` as a number)
            *parent, key = loc
            known = keys_at(schema, tuple(parent))
            out.append(f"{_key_path(path, parent)}.{key}: unknown key{_suggest(str(key), known)}; "
                       f"expected one of {', '.join(sorted(known))}")
        elif error["type"] == "missing":
            out.append(f"{_key_path(path, loc)}: missing; expected {expected(*field_at(schema, loc))}")
        else:
            out.append(f"{_key_path(path, loc)}: expected {expected(*field_at(schema, loc))}, "
                       f"got {_fmt(error['input'])}")
    return out


def _validate(schema: type[BaseModel], raw: dict, path: str) -> tuple[dict | None, list[str]]:
    """The block as a plain dict with every default filled, and its problems. With problems, the dict holds the
    top-level keys that did validate (the others left out), so that the checks across keys still report what they
    find there; None where a required key is missing or wrong."""
    try:
        return schema.model_validate(raw).model_dump(), []
    except ValidationError as exc:
        problems = _problems(exc, schema, path)
        bad = {error["loc"][0] for error in exc.errors()}
    try:
        rest = schema.model_validate({k: v for k, v in raw.items() if k not in bad}).model_dump()
    except ValidationError:
        return None, problems
    return {k: v for k, v in rest.items() if k not in bad}, problems


def validate_block(kind: str, block: dict, path: str = "block") -> dict:
    """One experiment's keys (shared keys included) validated as a `kind` block, every default filled; without the
    profile's checks across keys and files. For tools that build a config without a profile file (bench/)."""
    config, problems = _validate(SCHEMAS[kind], block, path)
    if problems:
        raise ParamsError("\n".join(problems))
    return settle_processes(kind, config)


def settle_processes(kind: str, config: dict) -> dict:
    """`processes` and `launch` in an experiment's config only where it runs in several processes: a one-process
    experiment's config, which its cache key hashes, stays what it was before they existed (so its results stay
    fresh), and a kind that does not train never has them. Several processes get the launch block's defaults."""
    if kind in TRAINED_KINDS and config.get("processes", 1) > 1:
        config.setdefault("launch", LaunchConfig().model_dump())
    else:
        for key in SEVERAL_PROCESSES:
            config.pop(key, None)
    return config


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
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
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
    path = resolve_profile_path(profile)
    raw = _read_yaml(path)
    errors = [f"{key}: unknown top-level key{_suggest(str(key), TOP_KEYS)}; expected description, shared, experiments"
              for key in raw if key not in TOP_KEYS]
    shared_raw = raw.get("shared") or {}
    if not isinstance(shared_raw, dict):
        errors.append(f"shared: expected a mapping, got {_fmt(shared_raw)}")
        shared_raw = {}
    errors += _validate(Shared, shared_raw, "shared")[1]
    # what every experiment inherits; a key `shared` may not have is reported once, above, not inherited
    shared = {k: v for k, v in shared_raw.items() if k in Shared.model_fields}
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
        errors.extend(_cross_checks(name, config))
    errors = _attribute_to_shared(errors, experiments_raw, shared_raw)
    if errors:
        raise ParamsError(f"{path}: {len(errors)} problem(s):\n" + "\n".join(f"  {path.name}: {e}" for e in errors))
    warnings = [w for name, config in prof.experiments.items() for w in _unpinned(name, config)]
    prof.warnings = _attribute_to_shared(warnings, experiments_raw, shared_raw)  # once each, as errors
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
        found = re.match(r"experiments\.([A-Za-z0-9_-]+)\.([\w.\[\]]+): (.*)", error, re.DOTALL)
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
    body = {k: v for k, v in block.items() if k != "notebook"}
    # validated merged, so that an experiment's own value wins; a problem it inherits is named once, in `shared`
    # (_attribute_to_shared)
    config, problems = _validate(SCHEMAS[kind], deep_merge(shared, body), path)
    errors.extend(problems)
    if config is None:
        return None
    # checked before settle_processes leaves them out (`shared` may set them for the kinds that train)
    errors.extend(launch_problems(path, config) if kind in TRAINED_KINDS else _one_process_only(path, kind, body))
    settle_processes(kind, config)
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


def _one_process_only(path: str, kind: str, body: dict) -> list[str]:
    """An experiment of a kind that does not train, asking for processes of its own: refused, not ignored."""
    asked = [key for key in SEVERAL_PROCESSES if key in body and (key != "processes" or body[key] != 1)]
    return [f"{path}.{key}: a {kind} experiment runs in one process; only the experiments that train (encoder "
            "methods, QLoRA) run in several: remove it" for key in asked]


def launch_problems(path: str, config: dict) -> list[str]:
    """What `processes` and `launch` must agree on, with each other and with the batch (each process takes an
    equal share of every optimizer step's rows); the rest is accelerate's to check."""
    processes, launch, errors = config.get("processes", 1), config.get("launch"), []
    if processes > 1 and "train" in config and config["train"]["batch_size"] % processes:
        errors.append(f"{path}.train.batch_size: expected a multiple of processes ({processes}): each process "
                      f"takes batch_size / processes rows of every optimizer step, got "
                      f"{config['train']['batch_size']}")
    if not launch or launch["num_machines"] == 1:
        return errors
    machines = launch["num_machines"]
    if processes % machines:
        errors.append(f"{path}.processes: expected a multiple of launch.num_machines ({machines}): every machine "
                      f"runs the same number of processes, got {processes}")
    if launch["machine_rank"] >= machines:
        errors.append(f"{path}.launch.machine_rank: expected an integer below num_machines ({machines}), got "
                      f"{launch['machine_rank']}")
    errors += [f"{path}.launch.{key}: {machines} machines meet at machine 0: set it"
               for key in ("main_process_ip", "main_process_port") if launch[key] is None]
    return errors


def with_processes(config: dict, processes: int | None = None, machine_rank: int | None = None) -> dict:
    """`nlilab run --processes N --machine-rank R` over an experiment's config: the kinds that train take them
    (checked as the profile's own values are), the others are left as they are."""
    if config["kind"] not in TRAINED_KINDS:
        return config
    config = copy.deepcopy(config)
    if processes is not None:
        config["processes"] = processes
    settle_processes(config["kind"], config)
    if machine_rank is not None and "launch" in config:  # one process: no machines to place
        config["launch"]["machine_rank"] = machine_rank
    problems = launch_problems(f"experiments.{config['name']}", config)
    if problems:
        raise ParamsError("the command line's --processes/--machine-rank do not fit:\n" + "\n".join(problems))
    return config


def _cross_checks(name: str, config: dict) -> list[str]:
    """Checks that span keys or look at the machine's files (never the network). A key that failed validation is
    not in `config`: the checks that read it wait until it is fixed."""
    path = f"experiments.{name}"
    errors = []
    if "notebooks_dir" in config:
        nb = Path(config["notebooks_dir"]) / f"{config['notebook']}.ipynb"
        if not nb.is_file():
            errors.append(f"{path}.notebook: notebook file {nb} does not exist")
    data = config.get("data")
    if data and data["source"] == "local":
        folder = data["local_dir"] or os.environ.get(MNLI_DIR_ENV)
        if not folder:
            errors.append(f"{path}.data.source: 'local' needs a folder: set data.local_dir or "
                          f"${MNLI_DIR_ENV}; neither is set")
        elif not Path(folder).is_dir():
            where = f"{path}.data.local_dir" if data["local_dir"] else f"${MNLI_DIR_ENV} (data.source 'local')"
            errors.append(f"{where}: expected an existing folder, got {folder!r}")
    if config.get("device") == "cpu" and config.get("precision") == "fp16":
        errors.append(f"{path}.precision: fp16 needs a GPU but device is 'cpu'; use fp32 or bf16")
    if "model" in config:
        problem = check_model_name(config["model"])
        if problem:
            errors.append(f"{path}.model: {problem}")
        else:
            errors.extend(_model_checks(path, config))
    if data and data["revision"] is not None and data["source"] != "hub":
        errors.append(f"{path}.data.revision: a revision pins a hub dataset, but data.source is "
                      f"{data['source']!r}; remove it")
    errors.extend(_kind_checks(path, config))
    return errors


def _model_checks(path: str, config: dict) -> list[str]:
    """Checks of a model the machine holds: a revision only for hub ids; LoRA targets it has."""
    source = model_source(config["model"])
    if source != "hub" and config.get("revision") is not None:
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
        return [(f"{path}.model: cannot build {config['model']!r} to check lora.target_modules: "
                 f"{type(exc).__name__}: {exc}")]
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
    method, sweep = config.get("method"), config.get("sweep")
    expected_method = NOTEBOOK_METHODS.get(config["notebook"])
    if method and expected_method and method != expected_method:
        errors.append(f"{path}.method: notebook {config['notebook']} runs method '{expected_method}', "
                      f"got {method!r}")
    if method and method != "lora" and sweep:
        errors.append(f"{path}.sweep: a learning-rate sweep is only supported for method 'lora'")
    if config["notebook"] == "13_lora_sweep" and "sweep" in config and not sweep:
        errors.append(f"{path}.sweep: notebook 13_lora_sweep needs a sweep block "
                      "(sweep: {param: learning_rate, values: [...]})")
    values = (sweep or {}).get("values") or []
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
    errors = []
    if config.get("seeds") and config.get("mode") == "zero_shot":
        errors.append(f"{path}.seeds: zero-shot scoring draws nothing at random, so it runs once; seeds apply "
                      "to mode one_shot (each seed draws its own demonstrations)")
    if config.get("calibration") == "contextual" and config.get("scoring", "loglik") != "loglik":
        errors.append(f"{path}.calibration: contextual calibration needs label scores (scoring: loglik)")
    prompt = config.get("prompt")
    if prompt:  # the prompt file, with the profile's overrides, passes the prompt's own checks
        try:
            load_prompt(prompt["name"], {k: v for k, v in prompt.items() if k != "name"})
        except ParamsError as exc:
            errors.extend(f"{path}.prompt: {line}" for line in str(exc).splitlines())
    return errors


def _qlora_checks(path: str, config: dict) -> list[str]:
    errors = []
    if config.get("device") == "cpu" and config.get("compute_dtype") == "fp16":
        errors.append(f"{path}.compute_dtype: fp16 needs a GPU but device is 'cpu'; use bf16 or fp32")
    template = config.get("input_template")
    if template:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            names = None
            errors.append(f"{path}.input_template: not a valid format string ({exc})")
        if names is not None and names != {"premise", "hypothesis"}:
            errors.append(f"{path}.input_template: expected exactly the placeholders {{premise}} and "
                          f"{{hypothesis}}, got {sorted(names)}")
    if config.get("quantize_embeddings") and config.get("quantization", "nf4") != "nf4":
        errors.append(f"{path}.quantize_embeddings: only with quantization: nf4 (got "
                      f"'{config['quantization']}'); set it to false")
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
