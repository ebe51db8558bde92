"""Checks before any notebook runs: environment problems (data, models, GPU) for every pending experiment."""

from __future__ import annotations

import sys
from pathlib import Path

from nlilab.data.nli import ensure_hub_dataset_available
from nlilab.errors import NlilabError
from nlilab.models.resolve import ALIASES, ensure_hub_model_available
from nlilab.params import Profile
from nlilab.run import cache
from nlilab.run.cache import cache_key

# Said once for every experiment that asks for a GPU on a machine without one (not once per experiment).
NO_GPU = ("device is 'cuda' but no GPU is visible here; run this profile on a machine with a GPU (or in Colab "
          "with a GPU runtime), or the cpu profile here: `nlilab run --profile cpu`")
GPU_KINDS = ("encoder", "qlora", "prompting")


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


def _check_device(config: dict) -> None:
    import torch  # only when a GPU may be needed

    from nlilab.training.trainer import resolve_device

    if config.get("device") == "cuda" and not torch.cuda.is_available():
        raise NlilabError(NO_GPU)
    resolve_device(config)


def memory_plans(configs: list[dict], card: int | None = None) -> tuple[dict[str, str], list[str]]:
    """The memory preflight (nlilab.models.memory) of the experiments that will run on this machine's GPU, before
    any weights are downloaded: (problems by experiment, notes). Nothing to check without a GPU."""
    from nlilab.models.memory import gpu_memory_bytes, plan_experiment

    gpu = [c for c in configs if c["kind"] in GPU_KINDS and c.get("device") in ("cuda", "auto")]
    card = card if card is not None else (gpu_memory_bytes() if gpu else None)
    problems, notes = {}, []
    for config in gpu if card else []:
        try:
            plan = plan_experiment(config, card)
        except NlilabError as exc:
            plan = None
            problems[config["name"]] = str(exc)
        if plan and plan.problem:
            problems[config["name"]] = plan.problem
        elif plan and plan.note:
            notes.append(plan.note)
    return problems, notes


def environment_problems(config: dict, checked: dict | None = None, local_device: bool = True) -> list[str]:
    """What this machine cannot give the experiment: a GPU-only setting without a GPU, a hub model or dataset
    neither cached nor reachable. Such settings are refused, never silently changed. With local_device False
    the experiment runs on other machines (a Ray cluster, whose executor checks the GPUs there instead)."""
    checked = {} if checked is None else checked
    checks = []
    if local_device and config["kind"] != "data" and (config.get("device") == "cuda"
                                                     or config.get("precision", "fp32") not in ("fp32", "auto")):
        checks.append(lambda: _check_device(config))
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


def preflight(prof: Profile, configs: list[dict], force: bool = False, local_device: bool = True) -> dict[str, dict]:
    """Before the first notebook starts, check in seconds what can be checked: the data files (hashed for the
    cache keys) and, for each experiment that will run, what it needs from this machine (its GPU only where
    local_device), then whether each fits the GPU's memory. One message lists every problem; returns the cache
    keys by experiment."""
    keys, problems, checked, pending = {}, {}, {}, []
    for config in configs:
        try:
            keys[config["name"]] = key = cache_key(config)
            fresh = not force and cache.is_fresh(config, key)
            found = [] if fresh else environment_problems(config, checked, local_device)
            pending += [] if fresh else [config]
        except NlilabError as exc:
            found = [str(exc)]
        for message in found:
            problems.setdefault(message, []).append(config["name"])
    if local_device and not problems:  # sized once the experiments can run here at all, before any download
        memory, notes = memory_plans(pending)
        for name, message in memory.items():
            problems.setdefault(message, []).append(name)
        for note in notes:
            print(f"nlilab: note: {note}", file=sys.stderr, flush=True)
    if problems:
        lines = [f"  experiments {', '.join(names)}: {message}" for message, names in problems.items()]
        failing = {name for names in problems.values() for name in names}
        raise NlilabError(f"{prof.path}: nothing was run; {len(failing)} experiment(s) cannot run on this "
                          "machine:\n" + "\n".join(lines))
    return keys
