"""The QLoRA experiment block (notebook 21_qlora, read by nlilab.methods.qlora): a decoder LM as a sequence
classifier, its base quantized (4-bit NF4 by default), LoRA (or bottleneck) adapters and a linear head over the last
non-pad token."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nlilab.methods.config import Lora
from nlilab.models.config import ModelBlock
from nlilab.schema import (
    Block,
    Flag,
    Fraction,
    Integer,
    KeepModels,
    NonEmptyList,
    PositiveNumber,
    Seeds,
    Text,
)
from nlilab.training.config import TrainConfig


class QLoraLora(Lora):
    """Adapters on the four attention projections of a Llama-style decoder."""

    r: Integer = Field(16, ge=1)
    alpha: PositiveNumber = 32
    dropout: Fraction = 0.05
    target_modules: NonEmptyList[Text] = ["q_proj", "k_proj", "v_proj", "o_proj"]  # noqa: RUF012


class Bottleneck(Block):
    size: Integer = Field(64, ge=1)


class QLoraExperiment(ModelBlock):
    adapter: Literal["lora", "bottleneck"] = "lora"
    quantization: Literal["nf4", "int8", "none"] = "nf4"
    # Where bitsandbytes cannot quantize on this machine: true falls back to unquantized weights and records it
    # (quantization: none + a note); false stops with an error.
    fallback: Flag = False
    compute_dtype: Literal["bf16", "fp16", "fp32", "auto"] = "bf16"  # auto: the run's precision
    double_quant: Flag = True
    # The input embedding table in NF4 too (QLoRA leaves it in 16 bits); needs quantization: nf4.
    quantize_embeddings: Flag = False
    gradient_checkpointing: Flag = False
    input_template: Text = "Premise: {premise}\nHypothesis: {hypothesis}"
    seeds: Seeds | None = None
    keep_models: KeepModels = "first"
    train: TrainConfig = Field(default_factory=TrainConfig)
    lora: QLoraLora = Field(default_factory=QLoraLora)
    bottleneck: Bottleneck = Field(default_factory=Bottleneck)
