"""GPU memory an experiment will need, estimated from the model's config alone, against the card it runs on.

Run before any weights are downloaded (only config.json is read), so that a profile that cannot fit stops in
seconds with the setting to change, not after an hour of downloading and an out-of-memory error mid-epoch.

The estimate adds, in bytes:
- weights: every parameter at the precision it is stored in (the Trainer keeps fp32 master weights under bf16 or
  fp16 autocast; a 4-bit NF4 linear weight takes half a byte plus its block scales);
- training state of the trainable parameters: an fp32 gradient and Adam's two fp32 moments (12 bytes each);
- activations kept for the backward pass: per transformer layer s*b*h*(34 + 5*a*s/h) bytes in 16-bit
  (Korthikanti et al., 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1, no
  parallelism), twice that in fp32; with gradient checkpointing only each layer's 16-bit input plus one layer's
  activations;
- for prompting, the KV cache and the logits of a batch;
- a fixed allowance for the CUDA context and allocator fragmentation (ALLOWANCE).
It is an estimate, and says so: it errs on the side of needing more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GiB = 2**30
# The CUDA context, cuBLAS workspaces and allocator fragmentation: an allowance, not a measurement.
ALLOWANCE = 1 * GiB
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0,
                # NF4: 4 bits, plus one fp32 absmax per 64 weights quantized to 8 bits with double quantization,
                # plus one fp32 per 256 of those (Dettmers et al., 2023, QLoRA, section 3)
                "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}
ADAM_STATE_BYTES = 12.0  # fp32 gradient + two fp32 moments per trainable parameter


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of an architecture, read from its config.json."""

    params: int
    embedding_params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True  # output embedding shares the input's (no separate LM head)


def read_config(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8"))


def shape_of(config: dict) -> Shape:
    """Parameter count from the architecture built on the meta device (no memory, exact for any model
    transformers knows), and the dimensions the activation terms need."""
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    heads = cfg.num_attention_heads
    return Shape(params=params, embedding_params=embedding, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                 heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, vocab=cfg.vocab_size,
                 tied=bool(getattr(cfg, "tie_word_embeddings", True)))


def layer_activations(shape: Shape, batch: int, length: int, precision: str) -> float:
    per_layer = length * batch * shape.hidden * (34 + 5 * shape.heads * length / shape.hidden)
    return per_layer * (2 if precision == "fp32" else 1)


@dataclass
class Estimate:
    experiment: str
    parts: dict = field(default_factory=dict)  # name -> bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values()) + ALLOWANCE

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GiB:.1f}" for name, value in self.parts.items() if value >= 0.05 * GiB)
        return f"about {self.total / GiB:.1f} GiB ({parts}, + {ALLOWANCE / GiB:.0f} allowance)"


def training_estimate(name: str, shape: Shape, *, trainable: int, batch: int, length: int, precision: str,
                      grad_layers: int | None = None, quantized: str | None = None,
                      checkpointing: bool = False) -> Estimate:
    """A trained experiment. `grad_layers`: how many layers the backward pass runs through (all, unless only
    the top layers train); `quantized`: the frozen linear weights' storage (QLoRA)."""
    layers = shape.layers if grad_layers is None else grad_layers
    if quantized:  # linear weights in 4 (or 8) bits; embeddings in 16 bits, as QLoRA leaves them
        weights = (shape.params - shape.embedding_params) * WEIGHT_BYTES[quantized] + shape.embedding_params * 2
    else:  # the Trainer's master weights stay fp32 under autocast
        weights = shape.params * 4.0
    full_layer = layer_activations(shape, batch, length, precision)
    if checkpointing:
        activations = layers * length * batch * shape.hidden * 2 + full_layer
    else:
        activations = layers * full_layer
    return Estimate(name, {"weights": weights, "gradients and Adam": trainable * ADAM_STATE_BYTES,
                           "activations": activations})


def prompting_estimate(name: str, shape: Shape, *, batch: int, length: int, weights: str) -> Estimate:
    """Scoring prompts: weights in `weights` ('bf16', 'fp16', 'fp32' or 'nf4'), a batch's KV cache and logits.
    A causal LM adds its output layer to the base model's parameters unless it reuses the input embedding."""
    head = 0 if shape.tied else shape.vocab * shape.hidden
    if weights in ("nf4", "int8"):  # the output layer stays in 16 bits, as bitsandbytes leaves lm_head
        weight_bytes = ((shape.params - shape.embedding_params) * WEIGHT_BYTES[weights]
                        + (shape.embedding_params + head) * 2)
        cache_bytes = 2.0
    else:
        weight_bytes = (shape.params + head) * WEIGHT_BYTES[weights]
        cache_bytes = WEIGHT_BYTES[weights]
    head_dim = shape.hidden // shape.heads
    kv_cache = 2 * shape.layers * batch * length * shape.kv_heads * head_dim * cache_bytes
    logits = batch * length * shape.vocab * 4.0  # upcast to fp32 for the log-softmax
    return Estimate(name, {"weights": weight_bytes, "KV cache": kv_cache, "logits": logits})


def gpu_memory_bytes() -> int | None:
    """The visible GPU's total memory, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)
