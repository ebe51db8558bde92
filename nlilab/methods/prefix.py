"""Deep prompts (prefix tuning, the P-tuning v2 recipe) for a frozen encoder classifier.

Every attention layer gets `length` learned key/value vectors that every real token can attend to; nothing is
added to the input sequence, so the classifier still reads the real first token. Only the prefix (and the
classification head) train.

Why our own module: PEFT's prefix tuning cannot drive BERT or RoBERTa with transformers 5 (encoders take
`cache=` instead of `past_key_values`, and PEFT refuses). The encoders do accept a pre-filled `DynamicCache`:
each self-attention layer concatenates the cached keys/values in front of its own, so a cache holding our
prefixes is exactly a deep prompt. The attention mask is widened by the prefix length, and position ids are
passed explicitly because the model would otherwise start the real tokens' positions after the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

PREFIX_FILE = "prefix.safetensors"
PREFIX_CONFIG = "prefix_config.json"


class PrefixEncoder(nn.Module):
    """Per-layer key/value prefixes, from a table of `length` embeddings, optionally through an MLP.

    P-tuning v2 found the reparametrization (embedding -> Linear -> tanh -> Linear) steadier to train on
    some tasks; without it, the table holds the keys and values directly.
    """

    def __init__(self, length: int, num_layers: int, num_heads: int, head_dim: int, hidden_size: int,
                 projection: bool = True, projection_hidden_size: int = 128):
        super().__init__()
        self.length, self.num_layers, self.num_heads, self.head_dim = length, num_layers, num_heads, head_dim
        width = num_layers * 2 * num_heads * head_dim
        if projection:
            self.embedding = nn.Embedding(length, hidden_size)
            self.projection = nn.Sequential(nn.Linear(hidden_size, projection_hidden_size), nn.Tanh(),
                                            nn.Linear(projection_hidden_size, width))
        else:
            self.embedding = nn.Embedding(length, width)
            self.projection = None
        # Small initial prefixes: the frozen model starts close to its own behaviour.
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(keys, values)] per layer, each (batch, heads, length, head_dim)."""
        table = self.embedding.weight
        if self.projection is not None:
            table = self.projection(table)
        kv = table.view(self.length, self.num_layers * 2, self.num_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # (layers*2, heads, length, head_dim)
        kv = kv.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers)]


def _plain_position_ids(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The positions the model gives the real tokens when nothing is cached (RoBERTa counts from padding_idx+1
    and skips pads; BERT counts from 0)."""
    embeddings = model.base_model.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx, 0)
    return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)


class PrefixClassifier(nn.Module):
    """A Hugging Face encoder classifier (BERT, RoBERTa, ...) with frozen weights plus trainable deep prompts.

    `head` names the modules that train with the prefix (the classification head).
    """

    def __init__(self, base, length: int, projection: bool = True, projection_hidden_size: int = 128,
                 head: tuple[str, ...] = ("classifier",)):
        super().__init__()
        cfg = base.config
        self.base = base
        self.config = cfg  # the Trainer and our code read model.config
        self.head = tuple(head)
        self.settings = {"length": length, "projection": projection,
                         "projection_hidden_size": projection_hidden_size, "head": list(self.head)}
        self.prefix = PrefixEncoder(length, cfg.num_hidden_layers, cfg.num_attention_heads,
                                    cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size,
                                    projection, projection_hidden_size)
        for name, param in base.named_parameters():
            param.requires_grad = name.split(".")[0] in self.head

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        from transformers import DynamicCache

        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix_mask = attention_mask.new_ones(batch, self.prefix.length)
        cache = DynamicCache(ddp_cache_data=self.prefix(batch))
        return self.base(input_ids=input_ids, token_type_ids=token_type_ids,
                         attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
                         position_ids=_plain_position_ids(self.base, input_ids),
                         cache=cache, labels=labels, **kwargs)

    # ------------------------------------------------------------------------------------------ saving
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What reuse needs on top of the pretrained model: the prefix encoder and the head."""
        state = {f"prefix.{k}": v for k, v in self.prefix.state_dict().items()}
        for name in self.head:
            module = getattr(self.base, name)
            state.update({f"base.{name}.{k}": v for k, v in module.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(folder / PREFIX_FILE))
        (folder / PREFIX_CONFIG).write_text(json.dumps(self.settings, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, base, folder: str | Path) -> "PrefixClassifier":
        """Rebuild from a pretrained classifier `base` and a folder written by `save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        settings = json.loads((folder / PREFIX_CONFIG).read_text(encoding="utf-8"))
        model = cls(base, settings["length"], settings["projection"], settings["projection_hidden_size"],
                    tuple(settings["head"]))
        missing, unexpected = model.load_state_dict(load_file(str(folder / PREFIX_FILE)), strict=False)
        expected = set(model.trainable_state())
        if unexpected or expected & set(missing):
            raise ValueError(f"{folder / PREFIX_FILE}: does not match the model "
                             f"(missing {sorted(expected & set(missing))[:3]}, unexpected {unexpected[:3]})")
        return model
