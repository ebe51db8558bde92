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

import functools
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
    intermediate: int = 0  # the MLP's width (LoRA on its projections, a layer's transient activations)


def read_config(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8"))


def shape_of(config) -> Shape:
    """Parameter count from the architecture built on the meta device (no memory, exact for any model
    transformers knows), and the dimensions the activation terms need. `config`: config.json's fields, or a
    transformers config."""
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = (AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
           if isinstance(config, dict) else config)
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    heads = cfg.num_attention_heads
    return Shape(params=params, embedding_params=embedding, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                 heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, vocab=cfg.vocab_size,
                 tied=bool(getattr(cfg, "tie_word_embeddings", True)),
                 intermediate=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size)


@functools.lru_cache(maxsize=16)
def _shape_from_json(text: str) -> Shape:
    return shape_of(json.loads(text))


def cached_shape(config: dict) -> Shape:
    """shape_of, once per architecture and process: building an 8B model on the meta device takes a second."""
    return _shape_from_json(json.dumps(config, sort_keys=True, default=str))


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


def prompting_estimate(name: str, shape: Shape, *, batch: int, length: int, weights: str,
                       logit_positions: int | None = None) -> Estimate:
    """Scoring prompts: weights in `weights` ('bf16', 'fp16', 'fp32' or 'nf4'), a batch's KV cache, one layer's
    transient activations, and the logits at `logit_positions` per row (every position when None; nlilab's
    scorer projects only the answer's positions). A causal LM adds its output layer to the base model's parameters
    unless it reuses the input embedding."""
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
    positions = length if logit_positions is None else logit_positions
    logits = 2 * batch * positions * shape.vocab * 4.0  # upcast to fp32, and the log-softmax's copy
    # the widest tensors one layer holds at a time: its input, attention output and the MLP's three projections
    layer = batch * length * (4 * shape.hidden + 3 * (shape.intermediate or 4 * shape.hidden)) * cache_bytes
    return Estimate(name, {"weights": weight_bytes, "KV cache": kv_cache, "activations": layer, "logits": logits})


def gpu_memory_bytes() -> int | None:
    """The total memory of the smallest visible GPU (each experiment gets one of them), or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return min(int(torch.cuda.get_device_properties(i).total_memory) for i in range(torch.cuda.device_count()))


# ------------------------------------------------------------------------------------------ an experiment's plan
def model_config(name: str, revision: str | None = None) -> dict | None:
    """An experiment's model config without its weights: a local folder's or embedded alias's own, the copy in
    the Hugging Face cache, or the bundled architecture (nlilab.models.architectures); None when none is at hand."""
    from nlilab.models.architectures import known_config
    from nlilab.models.resolve import local_config, model_source

    source = model_source(name)
    if source in ("alias", "local"):
        return local_config(name).to_dict()
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except ImportError:
        cached = None
    return read_config(cached) if isinstance(cached, str) else known_config(name)


def _lora_params(shape: Shape, lora: dict) -> int:
    """LoRA's A and B matrices: r x (in + out) per adapted projection per layer, counted at the widest
    projection (hidden -> intermediate) so that the estimate errs high."""
    return shape.layers * len(lora["target_modules"]) * lora["r"] * (shape.hidden + shape.intermediate)


def trainable_params(config: dict, shape: Shape) -> int:
    """What trains in an encoder or QLoRA experiment, from its method's block: the Adam state is kept for these."""
    head = shape.hidden * shape.hidden + 3 * shape.hidden  # a dense layer and the 3-way output (roberta's head)
    method = config.get("method", "lora" if config["kind"] == "qlora" else "full")
    if config["kind"] == "qlora":
        return (_lora_params(shape, config["lora"]) if config["adapter"] == "lora"
                else shape.layers * 2 * shape.hidden * config["bottleneck"]["size"]) + 3 * shape.hidden
    per_layer = (shape.params - shape.embedding_params) // shape.layers
    return head + {
        "full": shape.params,
        "top_layers": config["top_layers"]["k"] * per_layer,
        "lora": _lora_params(shape, config["lora"]),
        "ptuning": (config["ptuning"]["num_virtual_tokens"] * shape.hidden
                    + 2 * shape.hidden * config["ptuning"]["encoder_hidden_size"]
                    + config["ptuning"]["encoder_hidden_size"] ** 2),
        "prefix": config["prefix"]["num_virtual_tokens"] * shape.layers * 2 * shape.hidden,
    }[method]


def experiment_estimate(config: dict, shape: Shape, weights: str | None = None) -> Estimate:
    """The estimate for an experiment's config (kind encoder, qlora or prompting) at its batch size and longest
    allowed row (`max_length`: a batch of the longest rows is the worst case). `weights`: the prompting model's
    storage, else the 16-bit copy of the run's precision."""
    name, precision = config["name"], config.get("precision", "fp32")
    sixteen = "fp32" if precision == "fp32" else "bf16"  # fp16 and bf16 take the same bytes; auto is one of them
    if config["kind"] == "prompting":
        # the scorer projects the last position and the label words' tokens only (a handful per row)
        return prompting_estimate(name, shape, batch=config["batch_size"], length=config["max_length"],
                                  weights=weights or sixteen, logit_positions=4)
    train = config["train"]
    length = train["max_length"]
    if config.get("method") == "ptuning":  # the virtual tokens lengthen every row
        length += config["ptuning"]["num_virtual_tokens"]
    top = config["top_layers"]["k"] if config.get("method") == "top_layers" else None
    quantized = config.get("quantization") if config["kind"] == "qlora" else None
    return training_estimate(name, shape, trainable=trainable_params(config, shape), batch=train["batch_size"],
                             length=length, precision=sixteen, grad_layers=top,
                             quantized=None if quantized == "none" else quantized,
                             checkpointing=bool(config.get("gradient_checkpointing")))


@dataclass
class MemoryPlan:
    """What the preflight says about one experiment on one card: a problem stops the run; a note is said and
    recorded. `weights`: the prompting model's storage chosen by `quantization: auto` ('nf4' or 16 bits)."""

    experiment: str
    estimate: Estimate | None = None
    weights: str | None = None
    note: str | None = None
    problem: str | None = None


def _gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


def _smaller_batch(config: dict, shape: Shape, card: int, weights: str | None) -> tuple[str, int | None]:
    """The batch-size key of the experiment and the largest power-of-two batch below it that fits, if any."""
    key = "batch_size" if config["kind"] == "prompting" else "train.batch_size"
    block = config if config["kind"] == "prompting" else config["train"]
    batch = block["batch_size"] // 2
    while batch >= 1:
        trial = {**config, **({"batch_size": batch} if key == "batch_size"
                              else {"train": {**config["train"], "batch_size": batch}})}
        if experiment_estimate(trial, shape, weights).total <= card:
            return key, batch
        batch //= 2
    return key, None


def _too_big(config: dict, shape: Shape, est: Estimate, card: int, weights: str | None, other: str) -> str:
    key, fits = _smaller_batch(config, shape, card, weights)
    block = config if key == "batch_size" else config["train"]
    change = (f"set {key} to {fits} or less (now {block['batch_size']})" if fits
              else f"no batch size fits; {other}")
    return (f"experiment '{config['name']}': needs {est.describe()} of GPU memory (an estimate from the model's "
            f"config), more than this GPU's {_gib(card)}: {change}")


def plan_experiment(config: dict, card: int, model_cfg: dict | None = None) -> MemoryPlan:
    """The memory check of one experiment on a card of `card` bytes, before any weights are downloaded.
    Prompting with `quantization: auto` takes a 4-bit (NF4) copy of the model where the 16-bit one does not fit."""
    name = config["name"]
    if config["kind"] not in ("encoder", "qlora", "prompting"):
        return MemoryPlan(name)
    model_cfg = model_cfg or model_config(config["model"], config.get("revision"))
    if model_cfg is None:
        return MemoryPlan(name, note=f"experiment '{name}': no memory estimate (the config of "
                                     f"{config['model']!r} is neither cached nor bundled)")
    shape = cached_shape(model_cfg)
    if config["kind"] != "prompting":
        est = experiment_estimate(config, shape)
        other = ("lower train.max_length, or turn on gradient_checkpointing" if config["kind"] == "qlora"
                 else "lower train.max_length, or pick a parameter-efficient method (lora)")
        return MemoryPlan(name, est, problem=None if est.total <= card else _too_big(config, shape, est, card,
                                                                                      None, other))
    asked = config.get("quantization", "none")
    est = experiment_estimate(config, shape, "nf4" if asked == "nf4" else None)
    if est.total <= card:
        return MemoryPlan(name, est, weights="nf4" if asked == "nf4" else None)
    if asked == "auto":
        four = experiment_estimate(config, shape, "nf4")
        if four.total <= card:
            return MemoryPlan(name, four, weights="nf4", note=(
                f"experiment '{name}': {config['model']} in 16 bits needs {est.describe()}, more than this GPU's "
                f"{_gib(card)}: it prompts a 4-bit (NF4) copy instead, {four.describe()} (quantization: auto; "
                "set quantization: none to refuse, and run on a larger GPU)"))
        est = four
    other = ("set quantization: auto (a 4-bit copy where 16 bits do not fit) or nf4" if asked == "none"
             else "lower max_length")
    return MemoryPlan(name, est, problem=_too_big(config, shape, est, card, "nf4" if asked != "none" else None,
                                                  other))
