"""Which number format a run computes in, and why: `precision: auto` resolved for the device at hand.

- A GPU with bf16 arithmetic (Ampere and later) gets bf16: the range of fp32, so no loss scaling.
- A GPU without it (T4, V100) gets fp16, which the Trainer pairs with dynamic loss scaling: fp16's narrow
  range would otherwise flush small gradients to zero.
- A CPU gets bf16 autocast only where the processor has native bf16 instructions (AVX-512 BF16 or AMX);
  elsewhere bf16 is emulated and slower than fp32, so fp32.

The choice and its reason go into metrics.json (`precision_record`), so a reader knows what a number came from.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# /proc/cpuinfo flags of x86 processors with bf16 dot products (AVX-512 BF16; AMX tiles on Sapphire Rapids on)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo does not exist (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: str, *, gpu_bf16: bool | None = None,
                      flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, why) for `requested` on `device` ('cuda', 'cpu', 'mps'). An explicit precision is kept as it
    is (resolve_device refuses the impossible ones); only `auto` is chosen here."""
    if requested != "auto":
        return requested, "set in the profile"
    if device == "cuda":
        gpu_bf16 = cuda_has_bf16() if gpu_bf16 is None else gpu_bf16
        if gpu_bf16:
            return "bf16", "auto: the GPU has bf16 arithmetic"
        return "fp16", "auto: the GPU has no bf16 arithmetic; fp16 with dynamic loss scaling"
    if device == "cpu":
        if cpu_has_native_bf16(flags):
            return "bf16", "auto: the processor has native bf16 (AVX-512 BF16 or AMX); bf16 autocast"
        return "fp32", "auto: the processor has no native bf16 (it would be emulated, slower than fp32)"
    return "fp32", f"auto: fp32 on {device}"


def compute_dtype(requested: str, precision: str) -> str:
    """QLoRA's compute dtype (the dtype 4-bit weights are dequantized to): `auto` follows the run's precision."""
    return precision if requested == "auto" else requested


def precision_record(requested: str, device: str, **probe) -> dict:
    precision, why = resolve_precision(requested, device, **probe)
    return {"requested": requested, "precision": precision, "device": device, "why": why}
