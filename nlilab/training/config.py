"""The `train:` block of a profile (read by nlilab.training.trainer): the optimizer run of the encoder methods and
of QLoRA."""

from __future__ import annotations

from pydantic import Field

from nlilab.schema import (
    Block,
    Flag,
    Fraction,
    Integer,
    NonNegativeNumber,
    PositiveNumber,
)


class TrainConfig(Block):
    epochs: PositiveNumber = 3
    max_steps: Integer | None = Field(None, ge=1)  # set: stops there, whatever the epochs
    batch_size: Integer = Field(16, ge=1)
    eval_batch_size: Integer = Field(64, ge=1)
    learning_rate: PositiveNumber = 5e-5
    weight_decay: NonNegativeNumber = 0.01
    warmup_ratio: Fraction = 0.06
    max_length: Integer = Field(128, ge=8)
    gradient_accumulation_steps: Integer = Field(1, ge=1)
    logging_steps: Integer = Field(10, ge=1)
    save_total_limit: Integer = Field(1, ge=1)
    group_by_length: Flag = True
    # the exclusive timing window's optimizer steps (nlilab.training.costs.training_window), once per experiment;
    # 0: none
    window_steps: Integer = Field(12, ge=0)
