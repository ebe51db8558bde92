"""The encoder experiment block (notebooks 10-15, read by nlilab.experiments.encoder) and its methods' blocks (read by
nlilab.methods.encoder and nlilab.methods.prefix). Every method's block is filled with its defaults whichever method
runs, so that an experiment's config says everything about it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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

EncoderMethod = Literal["full", "top_layers", "lora", "ptuning", "prefix"]


class TopLayers(Block):
    k: Integer = Field(2, ge=0)  # the top k encoder layers train with the head; the others stay frozen


class Lora(Block):
    r: Integer = Field(8, ge=1)
    alpha: PositiveNumber = 16
    dropout: Fraction = 0.1
    # matched as PEFT matches a list: a module's dotted name equal to an entry or ending with '.' + it
    target_modules: NonEmptyList[Text] = ["query", "value"]  # noqa: RUF012 - pydantic copies it


class PTuning(Block):
    num_virtual_tokens: Integer = Field(20, ge=1)
    encoder_hidden_size: Integer = Field(128, ge=1)


class Prefix(Block):
    num_virtual_tokens: Integer = Field(16, ge=1)
    # No reparametrisation MLP by default: on MiniLM it collapsed to one class at learning rates >= 2e-3.
    projection: Flag = False
    projection_hidden_size: Integer = Field(128, ge=1)


class Sweep(Block):
    param: Literal["learning_rate"] = "learning_rate"
    values: NonEmptyList[PositiveNumber]


class EncoderExperiment(ModelBlock):
    method: EncoderMethod = "full"
    # what the head reads: auto = the model folder's own choice (mean for sentence-transformers models such as
    # MiniLM, the architecture's [CLS]/first-token head otherwise); see nlilab/methods/pooling.py
    pooling: Literal["auto", "cls", "mean"] = "auto"
    seeds: Seeds | None = None
    keep_models: KeepModels = "first"
    train: TrainConfig = Field(default_factory=TrainConfig)
    top_layers: TopLayers = Field(default_factory=TopLayers)
    lora: Lora = Field(default_factory=Lora)
    ptuning: PTuning = Field(default_factory=PTuning)
    prefix: Prefix = Field(default_factory=Prefix)
    sweep: Sweep | None = None  # notebook 13_lora_sweep: one run per value, chosen on the validation split
