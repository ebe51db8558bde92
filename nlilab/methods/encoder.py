"""Adaptation methods for an encoder classifier: which parameters train, and what must be saved.

Each builder takes the experiment config and a loadable model path and returns a `Built`: the model with its
trainable parameters set, a `save(folder)` that writes what is needed to reuse the result (a full checkpoint
for full fine-tuning; only the trained layers, adapter or prompts plus the head otherwise), and notes worth
recording in metrics.json. `reload(config, path, folder)` rebuilds a trained model from such a folder.

Every method trains a freshly initialised three-way head: the head is part of what each method learns and
stores, and the trainable-parameter counts include it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from nlilab import LABELS
from nlilab.errors import NlilabError
from nlilab.methods.built import Built
from nlilab.methods.pooling import apply_pooling, resolve_pooling
from nlilab.report.formats import rate  # as the findings print it (2.5e-5, not 3e-5)

HEAD_NAMES = ("classifier", "score")  # what HF calls the classification head of encoders / decoders
TRAINED_FILE = "trained.safetensors"
TRAINED_CONFIG = "trained_config.json"


# ------------------------------------------------------------------------------------------------ helpers
def _base_classifier(config: dict, path: str, folder: str | None = None):
    """A three-way classifier from `folder` (default: the pretrained `path`), pooled as the config says."""
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(LABELS))
    model = AutoModelForSequenceClassification.from_pretrained(
        folder or path, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    return apply_pooling(model, pooling_of(config, path), _where(config, "pooling"))


def pooling_of(config: dict, path: str) -> str:
    return resolve_pooling(config.get("pooling", "auto"), path)


def head_names(model) -> tuple[str, ...]:
    names = tuple(n for n in HEAD_NAMES if hasattr(model, n))
    if not names:
        raise NlilabError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    return names


def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def head_parameter_count(model) -> int:
    return _count(p for n in head_names(model) for p in getattr(model, n).parameters())


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _freeze_all_but(model, prefixes: tuple[str, ...]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefixes)


def _where(config: dict, key: str) -> str:
    return f"experiment '{config.get('name', '?')}': {key}"


# ------------------------------------------------------------------------------------------------ full
def build_full(config: dict, path: str) -> Built:
    model = _base_classifier(config, path)
    return Built(model, model.save_pretrained, {"trains": "all parameters",
                                                "head_params": head_parameter_count(model)})


# ------------------------------------------------------------------------------------------------ top layers
def _encoder_layers(model):
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None:
        raise NlilabError(f"{type(model).__name__}: top-layer fine-tuning needs an encoder with .encoder.layer")
    return layers


def _save_trained_state(model, folder: str, settings: dict) -> None:
    """Only the parameters that trained (plus how to rebuild): the rest is the pretrained model."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(out / TRAINED_FILE))
    (out / TRAINED_CONFIG).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def build_top_layers(config: dict, path: str) -> Built:
    model = _base_classifier(config, path)
    k = config["top_layers"]["k"]
    layers = _encoder_layers(model)
    if k > len(layers):
        raise NlilabError(f"{_where(config, 'top_layers.k')}: expected at most {len(layers)} "
                          f"(the model's layer count), got {k}")
    base = model.base_model_prefix  # "bert", "roberta", ...
    first = len(layers) - k
    # The pooler (BERT's, when the [CLS] head is used) sits above the last layer, so it trains with the top
    # layers; embeddings and the lower layers stay frozen.
    trained = tuple(f"{base}.encoder.layer.{i}." for i in range(first, len(layers)))
    trained += (f"{base}.pooler.",) + tuple(f"{n}." for n in head_names(model))
    _freeze_all_but(model, trained)
    settings = {"method": "top_layers", "k": k, "layers": len(layers)}
    notes = {"trains": f"encoder layers {first}..{len(layers) - 1} of 0..{len(layers) - 1}, pooler and head"
                       if k else "pooler and head only (k = 0)",
             "k": k, "layers": len(layers), "head_params": head_parameter_count(model)}
    return Built(model, lambda folder: _save_trained_state(model, folder, settings), notes)


# ------------------------------------------------------------------------------------------------ LoRA
def _check_target_modules(model, targets: list[str], config: dict) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [t for t in targets if t not in leaf_names]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise NlilabError(f"{_where(config, 'lora.target_modules')}: {unknown} match no module of "
                          f"{type(model).__name__}; its linear layers are named {', '.join(linear)}")


def _adapter_keys(folder: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter_model.safetensors"), "pt") as handle:
        return list(handle.keys())


def _assert_head_trainable(peft_model, heads: tuple[str, ...]) -> None:
    """PEFT wraps the head in modules_to_save for SEQ_CLS; without that it would stay at its random init."""
    trainable = trainable_names(peft_model)
    for head in heads:
        if not any(f".{head}.modules_to_save." in n for n in trainable):
            raise AssertionError(f"classification head '{head}' is not trainable under PEFT "
                                 f"(trainable: {sorted(trainable)[:5]}...)")


def _save_adapter_with_head(peft_model, heads: tuple[str, ...]) -> Callable[[str], None]:
    def save(folder: str) -> None:
        peft_model.save_pretrained(folder)
        keys = _adapter_keys(folder)
        for head in heads:
            if not any(f".{head}." in k or k.startswith(f"{head}.") for k in keys):
                raise AssertionError(f"{folder}: the saved adapter lacks the classification head '{head}' "
                                     f"(keys: {keys[:5]}...); reloading it would give a random head")
    return save


def _peft_notes(peft_model, heads, extra: dict) -> dict:
    head_params = _count(p for n, p in peft_model.named_parameters()
                         if p.requires_grad and any(f".{h}.modules_to_save." in n for h in heads))
    trainable = _count(p for p in peft_model.parameters() if p.requires_grad)
    return {**extra, "head_params": head_params, "adapter_params": trainable - head_params,
            "trains": "adapter and classification head (PEFT modules_to_save)"}


def build_lora(config: dict, path: str) -> Built:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = config["lora"]
    model = _base_classifier(config, path)
    _check_target_modules(model, lora["target_modules"], config)
    heads = head_names(model)
    peft_config = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora["r"], lora_alpha=lora["alpha"],
                             lora_dropout=lora["dropout"], target_modules=list(lora["target_modules"]))
    peft_model = get_peft_model(model, peft_config)
    _assert_head_trainable(peft_model, heads)
    notes = _peft_notes(peft_model, heads, {"r": lora["r"], "alpha": lora["alpha"], "dropout": lora["dropout"],
                                            "target_modules": list(lora["target_modules"])})
    return Built(peft_model, _save_adapter_with_head(peft_model, heads), notes)


# ------------------------------------------------------------------------------------------------ P-tuning
def build_ptuning(config: dict, path: str) -> Built:
    """PEFT's prompt encoder: virtual tokens prepended to the input embeddings, produced by an MLP.

    Note that PEFT puts the virtual tokens in front of [CLS], so a BERT-style head reads the first virtual
    token's output rather than [CLS]."""
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    pt = config["ptuning"]
    model = _base_classifier(config, path)
    heads = head_names(model)
    peft_config = PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=pt["num_virtual_tokens"],
                                      encoder_hidden_size=pt["encoder_hidden_size"])
    peft_model = get_peft_model(model, peft_config)
    _assert_head_trainable(peft_model, heads)
    notes = _peft_notes(peft_model, heads, dict(pt))
    return Built(peft_model, _save_adapter_with_head(peft_model, heads), notes)


# ------------------------------------------------------------------------------------------------ deep prompts
def build_prefix(config: dict, path: str) -> Built:
    from nlilab.methods.prefix import PrefixClassifier

    px = config["prefix"]
    base = _base_classifier(config, path)
    model = PrefixClassifier(base, px["num_virtual_tokens"], px["projection"], px["projection_hidden_size"],
                             head=head_names(base))
    notes = {"trains": "per-layer key/value prefixes and classification head", "head_params":
             head_parameter_count(base), "prefix_params": _count(model.prefix.parameters()), **px}
    return Built(model, model.save, notes)


METHODS: dict[str, Callable[[dict, str], Built]] = {
    "full": build_full,
    "top_layers": build_top_layers,
    "lora": build_lora,
    "ptuning": build_ptuning,
    "prefix": build_prefix,
}


def build(config: dict, path: str) -> Built:
    method = config["method"]
    if method not in METHODS:
        raise NotImplementedError(f"method '{method}' has no builder in nlilab.methods")
    built = METHODS[method](config, path)
    built.notes["pooling"] = pooling_of(config, path)
    return built


# ------------------------------------------------------------------------------------------------ reuse
def reload(config: dict, path: str, folder: str):
    """The trained model from the pretrained `path` plus what `Built.save` wrote to `folder` (eval mode)."""
    method = config["method"]
    folder = str(folder)
    if method == "full":
        model = _base_classifier(config, path, folder)
    elif method == "top_layers":
        from safetensors.torch import load_file

        model = _base_classifier(config, path)
        missing, unexpected = model.load_state_dict(load_file(str(Path(folder) / TRAINED_FILE)), strict=False)
        if unexpected:
            raise NlilabError(f"{folder}: trained weights do not fit {path}: unexpected {unexpected[:3]}")
    elif method in ("lora", "ptuning"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(_base_classifier(config, path), folder)
    elif method == "prefix":
        from nlilab.methods.prefix import PrefixClassifier

        model = PrefixClassifier.load(_base_classifier(config, path), folder)
    else:
        raise NotImplementedError(f"method '{method}' cannot be reloaded")
    return model.eval()


# ------------------------------------------------------------------------------------------------ labels
def method_label(config: dict, best_value: float | None = None) -> str:
    """A human name for tables and plots, with the settings that tell two rows of one method apart."""
    method = config["method"]
    lr = best_value or config["train"]["learning_rate"]
    if method == "full":
        return "Full fine-tuning"
    if method == "top_layers":
        return f"Top {config['top_layers']['k']} layers + head"
    if method == "lora":
        lora = config["lora"]
        base = f"LoRA r={lora['r']} alpha={lora['alpha']:g}"
        if config.get("sweep"):
            return f"{base}, lr sweep" + (f" (best {rate(lr)})" if best_value else "")
        return f"{base}, lr {rate(lr)}"
    if method == "ptuning":
        return f"P-tuning ({config['ptuning']['num_virtual_tokens']} virtual tokens)"
    if method == "prefix":
        return f"Deep prompts ({config['prefix']['num_virtual_tokens']} per layer)"
    return method
