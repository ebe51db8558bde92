"""The keys naming an experiment's model (read by nlilab.models.resolve): every kind that loads one has them."""

from __future__ import annotations

from pydantic import Field

from nlilab.schema import Block, Text


class ModelBlock(Block):
    # which model: checked against the machine (alias installed, folder present) by nlilab.params
    model: Text = Field(description="a model alias, hub id (org/name) or local folder")
    # hub ids only; null takes the hub's latest (allowed, with a warning: a rerun may load other weights)
    revision: Text | None = Field(None, description="a hub model revision (a commit hash)")
