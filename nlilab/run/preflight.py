"""Checks before any notebook runs: environment problems (data, models, GPU) for every pending experiment."""

from __future__ import annotations

from pathlib import Path

from nlilab.data.nli import ensure_hub_dataset_available
from nlilab.errors import NlilabError
from nlilab.models.resolve import ALIASES, ensure_hub_model_available
from nlilab.params import Profile
from nlilab.run import cache
from nlilab.run.cache import cache_key


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


def environment_problems(config: dict, checked: dict | None = None, local_device: bool = True) -> list[str]:
    """What this machine cannot give the experiment: a GPU-only setting without a GPU, a hub model or dataset
    neither cached nor reachable. Such settings are refused, never silently changed. With local_device False
    the experiment runs on other machines (a Ray cluster, whose executor checks the GPUs there instead)."""
    checked = {} if checked is None else checked
    checks = []
    if local_device and config["kind"] != "data" and (config.get("device") == "cuda"
                                                     or config.get("precision", "fp32") not in ("fp32", "auto")):
        from nlilab.training.trainer import (
            resolve_device,  # imports torch: only when a GPU may be needed
        )

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


def preflight(prof: Profile, configs: list[dict], force: bool = False, local_device: bool = True) -> dict[str, dict]:
    """Before the first notebook starts, check in seconds what can be checked: the data files (hashed for the
    cache keys) and, for each experiment that will run, what it needs from this machine (its GPU only where
    local_device). One message lists every problem; returns the cache keys by experiment."""
    keys, problems, checked = {}, {}, {}
    for config in configs:
        try:
            keys[config["name"]] = key = cache_key(config)
            fresh = not force and cache.is_fresh(config, key)
            found = [] if fresh else environment_problems(config, checked, local_device)
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
