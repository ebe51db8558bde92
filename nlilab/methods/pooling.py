"""How an encoder classifier turns token states into the one vector its head reads.

Hugging Face's BERT head reads the [CLS] state through a dense+tanh "pooler"; RoBERTa's reads the first token.
That suits models pre-trained with a [CLS] objective. A sentence-transformers model such as all-MiniLM-L6-v2
was trained to be *mean-pooled*: its [CLS] state and pooler were never trained for a sentence-level task. Put
under the [CLS] head, its fine-tuning on the bundled set sat at ln 3 training loss and 33-37% accuracy (four
runs: batches of 8 or 16, learning rates 1e-4 to 3e-4); with the mean of its token states it learned (README,
"Why MiniLM's head reads the mean of its token states").
`pooling: auto` therefore follows the model folder: mean when it ships a sentence-transformers pooling config
asking for mean tokens, the architecture's own head otherwise (roberta-large in the paper profile).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from nlilab.errors import NlilabError

POOLING_CONFIG = Path("1_Pooling") / "config.json"  # where sentence-transformers keeps its pooling choice


def resolve_pooling(choice: str, path: str) -> str:
    """'cls' (the architecture's own head) or 'mean', from the params value and the model folder."""
    if choice != "auto":
        return choice
    config = Path(path) / POOLING_CONFIG
    if config.is_file():
        settings = json.loads(config.read_text(encoding="utf-8"))
        if settings.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class MaskedMeanPooler(nn.Module):
    """Drop-in for BERT's pooler: the mean of the real tokens' states (padding excluded).

    The pooler is only handed the hidden states, so a forward pre-hook on the encoder stores the attention mask
    of the current call here. Deep prompts widen the mask by their prefix length on the left; the states cover
    only the real tokens, so the mask's last columns are the ones that match.
    """

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def remember_mask(self, module, args, kwargs) -> None:
        self.mask = kwargs.get("attention_mask")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or mask.dim() != 2:
            return hidden_states.mean(dim=1)
        weights = mask[:, -hidden_states.shape[1]:].unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def apply_pooling(model, mode: str, where: str = "pooling"):
    """Install `mode` on a freshly loaded sequence classifier (in place; returns it)."""
    if mode == "cls":
        return model
    encoder = model.base_model
    if getattr(encoder, "pooler", None) is None:
        raise NlilabError(f"{where}: 'mean' needs a BERT-style encoder whose head reads a pooler; "
                          f"{type(model).__name__} has none (use pooling: cls)")
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler
    encoder.register_forward_pre_hook(pooler.remember_mask, with_kwargs=True)
    return model
