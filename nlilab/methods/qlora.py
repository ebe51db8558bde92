"""A decoder LM as an NLI classifier on a 4-bit base: quantization plan, loading, adapters, footprint, reloading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nlilab import LABELS
from nlilab.errors import NlilabError
from nlilab.methods.built import Built

META_FILE = "nlilab_classifier.json"
ADAPTER_FILE = "bottleneck_adapters.safetensors"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def nf4_config(compute_dtype: str, double_quant: bool = True, skip: tuple[str, ...] = ()):
    """bitsandbytes' NF4 loading, computing in `compute_dtype` ('bf16', 'fp16', 'fp32'); `skip`: modules left out
    of quantization. The QLoRA classifier and 4-bit prompting both load through it."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=_dtype(compute_dtype), bnb_4bit_use_double_quant=double_quant,
                              llm_int8_skip_modules=list(skip) or None)


# =========================================================================================== quantization
@dataclass
class Quantization:
    requested: str  # nf4 | int8 | none
    applied: str  # what the weights really are
    note: str | None = None  # why applied differs from requested
    compute_dtype: str = "bf16"
    double_quant: bool = True
    embeddings: bool = False  # the input embedding table in NF4 too (only with nf4 applied)

    def bnb_config(self):
        from transformers import BitsAndBytesConfig

        if self.applied == "nf4":
            # The new head is created at load time: keep it out of quantization so that it trains in full
            # precision (and is saved as such).
            return nf4_config(self.compute_dtype, self.double_quant, skip=("score",))
        if self.applied == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["score"])
        return None

    def record(self) -> dict:
        return {"quantization": self.applied, "quantization_requested": self.requested,
                "quantization_note": self.note,
                "compute_dtype": self.compute_dtype if self.applied != "none" else None,
                "double_quant": self.double_quant if self.applied == "nf4" else None,
                "embeddings_4bit": self.embeddings and self.applied == "nf4"}


def bnb_problem(kind: str, device: str, compute_dtype: str = "bf16") -> str | None:
    """None when bitsandbytes can quantize and run a small layer of `kind` on `device`; otherwise why not.
    A real layer is built and called: an importable package is not proof that its kernels exist here."""
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available", with its reason
        return f"bitsandbytes cannot be imported ({type(exc).__name__}: {exc})"
    version = getattr(bnb, "__version__", "?")
    try:
        dtype = _dtype(compute_dtype)
        if kind == "nf4":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4").to(device)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
            dtype = torch.float16 if device == "cuda" else torch.float32
        with torch.no_grad():
            out = layer(torch.randn(2, 64, device=device, dtype=dtype))
        if not torch.isfinite(out).all():
            return f"bitsandbytes {version} {kind} on {device} returned non-finite values"
    except Exception as exc:  # noqa: BLE001
        return f"bitsandbytes {version} cannot run {kind} on {device} ({type(exc).__name__}: {exc})"
    return None


def plan_quantization(config: dict, device: str) -> Quantization:
    """Honour the requested quantization, or fall back to unquantized weights *with a recorded note* when the
    profile allows it (`fallback: true`), or stop with an error that says what to change."""
    requested = config["quantization"]
    plan = Quantization(requested, requested, None, config["compute_dtype"], config["double_quant"],
                        config.get("quantize_embeddings", False))
    if requested == "none":
        return plan
    problem = bnb_problem(requested, device, config["compute_dtype"])
    if problem is None:
        return plan
    if not config["fallback"]:
        raise NlilabError(f"experiment '{config['name']}': quantization '{requested}' was requested but {problem}. "
                          "Set `fallback: true` to train on unquantized weights (recorded as quantization: none) "
                          "or `quantization: none`.")
    plan.applied = "none"
    plan.note = f"'{requested}' requested but {problem}; trained on unquantized weights instead"
    return plan


# ============================================================================================== footprint
def _bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def weight_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers, including the scales that bitsandbytes keeps beside
    quantized weights (`get_memory_footprint` leaves those out): a 4-bit weight's per-block scales (its
    quant_state, nested under double quantization), an 8-bit weight's per-row scales (SCB, held by the weight
    until the layer's first call)."""
    total = _bytes(*model.parameters(), *model.buffers())
    for param in model.parameters():
        total += _bytes(getattr(param, "SCB", None))
        state = getattr(param, "quant_state", None)
        for part in (state, getattr(state, "state2", None)):
            total += _bytes(getattr(part, "absmax", None), getattr(part, "code", None))
    return int(total)


def sixteen_bit_bytes(path: str) -> tuple[int, int]:
    """(bytes, parameters) of the same classifier with every weight in bf16, built on the meta device: the
    exact size of 16-bit weights without allocating them (8B parameters would need 16 GB)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(path, num_labels=len(LABELS))
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16)
    return weight_bytes(model), sum(p.numel() for p in model.parameters())


def quantized_modules(model) -> dict:
    """How many linear layers bitsandbytes replaced, and whether the head stayed a plain trainable Linear."""
    import torch

    kinds = {}
    for module in model.modules():
        name = type(module).__name__
        if name in ("Linear4bit", "Linear8bitLt", "FrozenEmbeddingNF4"):
            kinds[name] = kinds.get(name, 0) + 1
    head = _find_head(model)
    return {"quantized_linear_layers": kinds, "head_type": type(head).__name__ if head is not None else None,
            "head_is_plain_linear": isinstance(head, torch.nn.Linear) and type(head).__name__ == "Linear"}


def _find_head(model):
    for name, module in model.named_modules():
        if name.endswith("score") and hasattr(module, "weight"):
            return module
    return None


# ================================================================================================ loading
def load_tokenizer(path: str):
    """Right padding and a pad token: the classifier finds each row's last real token by the pad id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_base(path: str, tokenizer, quant: Quantization, device: str, precision: str = "fp32"):
    """The base classifier (new 3-way head `score`), quantized as planned; pad id set on its config too."""
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(LABELS))
    kwargs = dict(num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    bnb = quant.bnb_config()
    if bnb is not None:
        # What stays unquantized (embeddings, norms, head) is stored in 16 bits, as a 4-bit deployment would
        # keep it; prepare_model_for_kbit_training later up-casts it to fp32 for training.
        storage = quant.compute_dtype if quant.compute_dtype in ("bf16", "fp16") else "bf16"
        kwargs.update(quantization_config=bnb, dtype=_dtype(storage), device_map={"": device})
    else:
        kwargs["dtype"] = _dtype(precision)
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    if bnb is None:
        model = model.to(device)
    elif quant.applied == "nf4" and quant.embeddings:
        quantize_input_embeddings(model, quant, device)
    # Without it, LlamaForSequenceClassification refuses batches above 1 and cannot find the last real token.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _frozen_nf4_embedding_class():
    import bitsandbytes as bnb
    import torch

    class FrozenEmbeddingNF4(bnb.nn.EmbeddingNF4):
        """bitsandbytes' 4-bit embedding, which refuses to be saved; here it is frozen and rebuilt from the base
        model on reload, so its packed bytes go into a state dict like any tensor (PEFT and the Trainer ask for
        the whole state dict, then keep the adapters and the head only)."""

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)

    return FrozenEmbeddingNF4


def quantize_input_embeddings(model, quant: Quantization, device: str) -> None:
    """Store the frozen input embedding table in NF4 as well. QLoRA quantizes the linear layers only; with a
    large vocabulary and a small body (SmolLM2-135M: 28M of its 135M parameters) the 16-bit table is then
    close to half of what the base occupies. Blocks of 64 values share one scale, as in the linear layers;
    a lookup dequantizes only the rows it reads."""
    import bitsandbytes as bnb

    old = model.get_input_embeddings()
    blocksize = 64
    if old.embedding_dim % blocksize:
        raise NlilabError(f"quantize_embeddings: the embedding width {old.embedding_dim} is not a multiple of "
                          f"{blocksize}; set quantize_embeddings: false")
    new = _frozen_nf4_embedding_class()(old.num_embeddings, old.embedding_dim, dtype=_dtype(quant.compute_dtype))
    new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4", blocksize=blocksize,
                                   compress_statistics=False)  # the per-row lookup reads plain scales
    model.set_input_embeddings(new.to(device))


def tokenize(data, tokenizer, template: str, max_length: int) -> dict:
    """Each pair as one text (the template), unpadded: the collator pads each batch on the right."""

    def encode(batch):
        texts = [template.format(premise=p, hypothesis=h) for p, h in zip(batch["premise"], batch["hypothesis"])]
        return tokenizer(texts, truncation=True, max_length=max_length)

    out = {}
    for split, ds in data.splits.items():
        encoded = ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c != "label"],
                         desc=f"tokenize {split}")
        out[split] = encoded.rename_column("label", "labels")
    return out


# =============================================================================================== adapters
def _bottleneck_class():
    import torch

    class Bottleneck(torch.nn.Module):
        """The seed's adapter: down-projection, non-linearity, up-projection, added to the block's output.
        The up-projection starts at zero so that training starts from the unchanged base model."""

        def __init__(self, hidden: int, size: int):
            super().__init__()
            self.down = torch.nn.Linear(hidden, size)
            self.up = torch.nn.Linear(size, hidden)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, hidden):
            return hidden + self.up(torch.nn.functional.gelu(self.down(hidden.to(self.down.weight.dtype)))).to(
                hidden.dtype)

    return Bottleneck


def _decoder_layers(model):
    body = getattr(model, model.base_model_prefix)
    if not hasattr(body, "layers"):
        raise NlilabError(f"{type(model).__name__}: no decoder layers found for bottleneck adapters")
    return body.layers


def _apply_adapter(module, args, output):
    adapted = module.bottleneck_adapter(output[0] if isinstance(output, tuple) else output)
    return (adapted, *output[1:]) if isinstance(output, tuple) else adapted


def add_bottleneck_adapters(model, size: int) -> None:
    """A Bottleneck after every decoder block (registered as a child of the block, so it is saved and moved
    with the model), applied by a forward hook on the block's output hidden state."""
    Bottleneck = _bottleneck_class()
    hidden = model.config.hidden_size
    device = next(p.device for p in model.parameters())
    for layer in _decoder_layers(model):
        layer.bottleneck_adapter = Bottleneck(hidden, size).to(device)
        layer.register_forward_hook(_apply_adapter)


def _wrapper_class():
    import torch

    class AdaptedClassifier(torch.nn.Module):
        """Holds a quantized base with hand-made adapters. The Trainer refuses a bare quantized model that is
        not a PEFT model; our adapters are trainable all the same, so the model is handed over in this shell."""

        def __init__(self, model):
            super().__init__()
            self.model = model
            self.config = model.config

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    return AdaptedClassifier


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


# ================================================================================================= build
def _prepare_for_training(model, quant: Quantization, gradient_checkpointing: bool):
    if quant.applied == "none":
        return model
    from peft import prepare_model_for_kbit_training

    # Casts the remaining 16-bit parameters (norms, embeddings, head) to fp32 for stable updates and lets
    # gradients flow to the input embeddings' output, which gradient checkpointing needs.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def attach_adapter(model, config: dict, quant: Quantization):
    """LoRA through PEFT (the head joins `modules_to_save`), or bottleneck adapters; only those and the head
    train."""
    model = _prepare_for_training(model, quant, config.get("gradient_checkpointing", False))
    if config["adapter"] == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = config["lora"]
        peft_config = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora["r"], lora_alpha=lora["alpha"],
                                 lora_dropout=lora["dropout"], target_modules=list(lora["target_modules"]),
                                 modules_to_save=["score"])
        return get_peft_model(model, peft_config)
    for param in model.parameters():
        param.requires_grad = False
    add_bottleneck_adapters(model, config["bottleneck"]["size"])
    for param in _find_head(model).parameters():
        param.requires_grad = True
    # prepare_model_for_kbit_training may have left the head in 16-bit on a non-quantized path: train in fp32.
    _find_head(model).float()
    return _wrapper_class()(model)


def _meta(config: dict, path: str, quant: Quantization, tokenizer) -> dict:
    return {"adapter": config["adapter"], "base": path, "quantization": quant.record(),
            "input_template": config["input_template"], "pad_token_id": tokenizer.pad_token_id,
            "labels": list(LABELS), "lora": config["lora"] if config["adapter"] == "lora" else None,
            "bottleneck": config["bottleneck"] if config["adapter"] == "bottleneck" else None,
            "precision": config.get("precision", "fp32")}


def _saver(model, meta: dict):
    """Save only what reuse needs: the adapters and the head (never the 4-bit base, rebuilt from `base`)."""

    def save(folder: str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if meta["adapter"] == "lora":
            model.save_pretrained(str(folder))
        else:
            from safetensors.torch import save_file

            save_file(trainable_state(model.model), str(folder / ADAPTER_FILE))
        (folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    return save


def build(config: dict, path: str, tokenizer, quant: Quantization, device: str) -> Built:
    """Base (quantized as planned) + adapters + head, with the notes metrics.json needs."""
    model = load_base(path, tokenizer, quant, device, config.get("precision", "fp32"))
    footprint = weight_bytes(model)  # before prepare_model_for_kbit_training up-casts norms and embeddings
    layout = quantized_modules(model)
    model = attach_adapter(model, config, quant)
    # PEFT keeps a frozen original of the head beside the trainable copy it saves: look for the latter.
    head_trainable = any(p.requires_grad for n, p in model.named_parameters() if "score" in n.split("."))
    # A 4-bit weight is stored two to a byte, so its tensor reports half the parameters it holds.
    logical = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())
    notes = {"adapter": config["adapter"], "weights_bytes_loaded": footprint, **layout,
             "total_params_logical": int(logical),
             "head_trainable": head_trainable,
             "pooling": "last non-pad token (pad_token_id on tokenizer and model config)",
             "pad_token_id": tokenizer.pad_token_id, **quant.record()}
    return Built(model, _saver(model, _meta(config, path, quant, tokenizer)), notes)


def load_trained(folder: str, device: str = "cpu"):
    """Rebuild a saved classifier: the base from its source, quantized as it was, then adapters and head."""
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    record = meta["quantization"]
    quant = Quantization(record["quantization_requested"], record["quantization"], record["quantization_note"],
                         record["compute_dtype"] or "bf16", bool(record["double_quant"]),
                         bool(record.get("embeddings_4bit")))
    tokenizer = load_tokenizer(meta["base"])
    base = load_base(meta["base"], tokenizer, quant, device, meta.get("precision", "fp32"))
    base = _prepare_for_training(base, quant, False)  # the same up-casts as in training, for the same logits
    if meta["adapter"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(folder))
    else:
        from safetensors.torch import load_file

        add_bottleneck_adapters(base, meta["bottleneck"]["size"])
        state = load_file(str(folder / ADAPTER_FILE))
        missing = set(state) - set(dict(base.named_parameters()))
        if missing:
            raise NlilabError(f"{folder / ADAPTER_FILE}: tensors not found in the rebuilt model: {sorted(missing)[:5]}")
        own = dict(base.named_parameters())
        for name, tensor in state.items():
            own[name].data = tensor.to(device=own[name].device, dtype=tensor.dtype)
        model = base
    return model.eval(), tokenizer, meta
