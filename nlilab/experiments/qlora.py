"""The QLoRA classifier experiment: train each seed of a 4-bit decoder classifier, write metrics.json (the same
fields as the encoder experiments, plus quantization and footprint)."""

from __future__ import annotations

from nlilab.data.nli import load_nli
from nlilab.experiments.trained import Trained, method_notes
from nlilab.methods.qlora import (
    build,
    load_tokenizer,
    plan_quantization,
    sixteen_bit_bytes,
    tokenize,
)
from nlilab.models.resolve import resolve_model
from nlilab.training.distributed import rank_device
from nlilab.training.trainer import resolve_device

ADAPTER_WORDS = {"lora": "LoRA", "bottleneck": "bottleneck adapters"}
BITS_WORDS = {"nf4": "4-bit NF4", "int8": "8-bit", "none": "unquantized"}
QUANTIZATION_FIELDS = ("quantization", "quantization_requested", "quantization_note", "compute_dtype")


def footprint_record(notes: dict, path: str) -> dict:
    sixteen, params = sixteen_bit_bytes(path)
    loaded = notes["weights_bytes_loaded"]
    return {"weight_footprint_mb": {
        "loaded": loaded / 2**20, "bf16": sixteen / 2**20, "ratio": loaded / sixteen,
        "loaded_as": notes["quantization"], "embeddings_4bit": bool(notes.get("embeddings_4bit")),
        "how": "parameter + buffer bytes (+ bitsandbytes quantization scales) of the base classifier as loaded; "
               "bf16: the same architecture built on the meta device in bfloat16"},
        "base_params": int(params)}


class QLoRA(Trained):
    def prepare(self) -> None:
        config = self.config
        self.device = rank_device(resolve_device(config))  # each process of several: its own GPU, its own copy
        self.resolved = resolve_model(config["model"], config.get("revision"))
        self.quant = plan_quantization(config, self.device)
        self.data = load_nli(config["data"], seed=config["seed"])
        self.tokenizer = load_tokenizer(self.resolved.path)
        self.tokenized = tokenize(self.data, self.tokenizer, config["input_template"], config["train"]["max_length"])

    def build(self):
        return build(self.config, self.resolved.path, self.tokenizer, self.quant, self.device)

    def summarize(self, runs: list[dict]) -> dict:
        metrics = super().summarize(runs)
        notes = method_notes(runs)
        metrics.update(footprint_record(notes, self.resolved.path))
        if metrics.get("cost"):  # beside the static footprint: what training needs, after PEFT's up-casts
            metrics["cost"]["training_peak_mb"] = metrics["cost"]["gpu_peak_mb"] or metrics["cost"]["peak_rss_mb"]
        if notes.get("total_params_logical"):  # count_parameters sees packed 4-bit tensors at half their size
            metrics["total_params"] = notes["total_params_logical"]
            metrics["trainable_share"] = metrics["trainable_params"] / notes["total_params_logical"]
        return metrics

    def method(self) -> str:
        return f"qlora_{self.config['adapter']}"

    def label(self, metrics: dict) -> str:
        applied = method_notes(metrics["runs"])["quantization"]  # what the weights were, not what was asked
        return f"classifier: {ADAPTER_WORDS[self.config['adapter']]}, {BITS_WORDS[applied]} base"

    def record(self, metrics: dict) -> dict:
        notes = method_notes(metrics["runs"])
        return {**super().record(metrics), "adapter": self.config["adapter"],
                **{key: notes[key] for key in QUANTIZATION_FIELDS}}


def run(config: dict) -> dict:
    """Train every seed, write metrics.json, return it."""
    return QLoRA(config).run()
