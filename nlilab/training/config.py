"""The `train:` block of a profile (read by nlilab.training.trainer): the optimizer run of the encoder methods and
of QLoRA; and the `launch:` block (read by nlilab.training.distributed): what `accelerate launch` is told when
several processes train one experiment."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

from nlilab.schema import (
    Block,
    Flag,
    Fraction,
    Integer,
    NonNegativeNumber,
    PositiveNumber,
    Text,
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


class LaunchConfig(Block):
    """Passed through to `accelerate launch` as written, when `processes` is above 1: the machines of a run that
    spans several, and where they meet. `processes` counts every machine's processes together."""

    num_machines: Integer = Field(1, ge=1)
    # each machine's own place (0 holds rank 0, which writes the results); `nlilab run --machine-rank` sets it
    machine_rank: Integer = Field(0, ge=0)
    main_process_ip: Text | None = Field(None, description="machine 0's address (a string), or null")
    # null: a free port, found on the one machine (two experiments launched at once must not share one)
    main_process_port: Integer | None = Field(None, ge=1, le=65535)
    same_network: Flag = False
    # any further options of `accelerate launch`, each as its command line writes it (["--rdzv_backend", "c10d"])
    extra_args: Annotated[list[Text], Strict()] = []  # noqa: RUF012 - pydantic copies it
