"""The `data:` block of a profile (read by nlilab.data.nli), and the 00_data notebook's own keys."""

from __future__ import annotations

from typing import Literal

from pydantic import AfterValidator, Field

from nlilab.schema import Block, Integer, Text, number


def _fraction_or_rows(value: float) -> float | int:
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)  # a row count stays a whole number
    raise ValueError("neither a fraction in (0, 1) nor a whole number of rows")


FractionOrRows = number(AfterValidator(_fraction_or_rows))


class DataConfig(Block):
    source: Literal["bundled", "local", "hub"] = "bundled"
    local_dir: Text | None = Field(None, description="a folder path")  # source 'local'; else $NLILAB_MNLI_DIR
    hub_id: Text = "nyu-mll/multi_nli"
    # source 'hub' only; null takes the hub's latest
    revision: Text | None = Field(None, description="a hub dataset revision (a commit hash)")
    # The validation split held out of the labeled training rows: everything chosen by looking at scores is chosen
    # on it; the dev sets stay test sets. A share of the rows, or a number of rows.
    validation_size: FractionOrRows = Field(
        0.1, description="a fraction in (0, 1) or a whole number of rows >= 1")
    train_limit: Integer | None = Field(None, ge=1)
    eval_limit: Integer | None = Field(None, ge=1)


class DataExperiment(Block):
    """00_data: the data a profile uses, shown with a few example pairs."""

    examples: Integer = Field(5, ge=0)
