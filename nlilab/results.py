"""Results on disk: `results/<profile>/<experiment>/metrics.json`, written atomically, with a run record.

A metrics.json is either complete or absent: it is written to a temporary file in the same folder, flushed,
fsynced and renamed over the old one, so a crash at any moment never leaves half a file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from nlilab import __version__
from nlilab.training.costs import peak_rss_mb

METRICS = "metrics.json"
SCHEDULE = "schedule.json"  # written by the runner once every experiment of a run has ended
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "papermill", "numpy")


def atomic_write_json(path: str | os.PathLike, payload) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_jsonable)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def executed_notebook(config: dict) -> Path:
    """Where the runner writes an experiment's executed notebook (rendered beside the report)."""
    return Path(config["reports_dir"]) / config["profile"] / "notebooks" / f"{config['name']}.ipynb"


def experiment_dir(config: dict) -> Path:
    return Path(config["output_dir"])


def write_metrics(config: dict, metrics: dict) -> Path:
    """Write an experiment's metrics.json with the run record attached."""
    payload = {"experiment": config["name"], "profile": config.get("profile"), "kind": config["kind"],
               "status": "ok", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    payload.update(metrics)
    payload["run_record"] = run_record(config, metrics.get("data_fingerprint"))
    return atomic_write_json(experiment_dir(config) / METRICS, payload)


def load_results(results_dir, profile: str) -> dict[str, dict]:
    """Every experiment's metrics.json under results/<profile>/, by experiment name, with the runner's
    schedule.json (when it ran, beside which experiments) as m["schedule"] where there is one."""
    base = Path(results_dir) / profile
    out = {}
    if base.is_dir():
        for path in sorted(base.glob(f"*/{METRICS}")):
            metrics = read_json(path)
            schedule = read_json(path.parent / SCHEDULE)
            if schedule is not None:
                metrics["schedule"] = schedule
            out[path.parent.name] = metrics
    return out


# ------------------------------------------------------------------------------------------------ run record
def package_versions() -> dict:
    versions = {"python": platform.python_version(), "nlilab": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: Path | None = None) -> str | None:
    root = root or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    cpu = platform.processor() or platform.machine()
    return f"cpu: {cpu}, {os.cpu_count()} cores" + (f", {threads} torch threads" if threads else "")


def run_record(config: dict, data_fingerprint: str | None = None) -> dict:
    return {
        "profile": config.get("profile"),
        "experiment": config.get("name"),
        "parameters": {k: v for k, v in config.items() if k not in ("output_dir",)},
        "packages": package_versions(),
        "git_commit": git_commit(),
        "data_fingerprint": data_fingerprint,
        "device": device_description(),
        "platform": platform.platform(),
        "argv": sys.argv[:1],
    }


# ------------------------------------------------------------------------------------------------ measuring
def peak_memory_mb() -> dict:
    """Peak resident memory of this process (CPU) and peak allocated GPU memory, in MiB: since the current
    seed's start where a costs.SeedMeter reset the peaks, else over the process's life."""
    out = {"cpu_rss_peak_mb": peak_rss_mb()}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return out


def dir_size_bytes(path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def count_parameters(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": int(trainable), "total_params": int(total),
            "trainable_share": float(trainable / total) if total else 0.0}
