"""The prompting experiment block (notebook 20_prompting, read by nlilab.experiments.prompting): zero- or one-shot
scoring of a causal LM. The prompt itself is a file in nlilab/prompting/prompts/; `prompt` names it and may override
its fields (null keeps the file's value; nlilab.prompting.prompts checks the result)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nlilab.models.config import ModelBlock
from nlilab.schema import Block, Flag, Integer, NonEmptyList, Seeds, Text


class LabelWords(Block):
    entailment: Text | None = None
    neutral: Text | None = None
    contradiction: Text | None = None


class PromptChoice(Block):
    name: Text = Field("harness_mnli",
                       description="a prompt name (nlilab/prompting/prompts/<name>.yaml) or a YAML file")
    version: Integer | None = Field(None, ge=1)  # set: the file must still be this version
    title: Text | None = None
    template: Text | None = None
    system: Text | None = None
    chat_template: Flag | None = None
    fewshot_separator: Text | None = None
    hypothesis_period: Flag | None = None
    add_special_tokens: Flag | None = None
    label_words: LabelWords | None = None


class PromptingExperiment(ModelBlock):
    mode: Literal["zero_shot", "one_shot"] = "zero_shot"
    scoring: Literal["loglik", "generate"] = "loglik"
    prompt: PromptChoice = Field(default_factory=PromptChoice)
    seeds: Seeds | None = None  # one_shot: each seed draws its own demonstrations
    rotate_demo_labels: Flag = True
    calibration: Literal["none", "contextual"] = "none"
    # what contextual calibration scores in place of a pair
    content_free_inputs: NonEmptyList[Text] = ["N/A"]  # noqa: RUF012 - pydantic copies it
    batch_size: Integer = Field(16, ge=1)
    # the longest context kept (longer ones lose their start); the memory preflight sizes a batch of these
    max_length: Integer = Field(2048, ge=16)
    # The model's weights on a GPU: none = the run's 16-bit precision; nf4 = a 4-bit copy (bitsandbytes);
    # auto = 16 bits where the memory preflight finds they fit the GPU, else the 4-bit copy, and says so
    # (nlilab.models.memory.plan_experiment). Ignored on the CPU.
    quantization: Literal["none", "auto", "nf4"] = "none"
    max_new_tokens: Integer = Field(5, ge=1)
