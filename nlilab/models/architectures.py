"""The architectures of the hub models the GPU profiles use, as config.json fields, so that the memory preflight
(nlilab.models.memory) can size an experiment before anything is downloaded, on a machine without the hub.

Only the fields that fix the parameter count and the activation sizes are kept. Each is copied from the model's
published config.json on the Hugging Face hub:
- roberta-large: https://huggingface.co/FacebookAI/roberta-large/blob/main/config.json (Liu et al., 2019,
  "RoBERTa", table 9 of the BERT-large shape: 24 layers, hidden 1024, 16 heads; 355M parameters);
- Llama-3-8B(-Instruct): https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/blob/main/config.json (the
  model card: 8B parameters, grouped-query attention with 8 key/value heads, a 128K-token vocabulary). Llama 3.1
  8B has the same shape (only its RoPE scaling differs, which does not change memory).
A model is matched by the name after the hub owner, so that an open copy of the same weights
(`someone/Meta-Llama-3-8B-Instruct`) is sized like the original.
"""

from __future__ import annotations

ROBERTA_LARGE = dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)
LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                 max_position_embeddings=8192, tie_word_embeddings=False)

KNOWN = {
    "roberta-large": ROBERTA_LARGE,
    "meta-llama-3-8b": LLAMA3_8B,
    "meta-llama-3-8b-instruct": LLAMA3_8B,
    "llama-3.1-8b": LLAMA3_8B,
    "llama-3.1-8b-instruct": LLAMA3_8B,
}


def known_config(model: str) -> dict | None:
    """The bundled config of a hub id such as `FacebookAI/roberta-large`, or None for an architecture not kept."""
    found = KNOWN.get(model.rsplit("/", 1)[-1].lower())
    return dict(found) if found else None
