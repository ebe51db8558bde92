"""Greedy generation of a short answer and parsing it back to a label (answers naming no label are counted)."""

from __future__ import annotations

import re

import numpy as np

from nlilab import LABELS
from nlilab.evaluation.metrics import macro_f1, score
from nlilab.progress import bar
from nlilab.prompting.prompts import Prompt


# ============================================================================================== generation
def generate_answers(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, batch_size: int,
                     progress: bool = True) -> list[str]:
    """Greedy continuation of each context (token ids), decoded; batches are left-padded, longest first."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    answers = [""] * len(contexts)
    device = next(model.parameters()).device
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in bar(batches, desc="generate", disable=not progress, leave=False):
            width = max(len(contexts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(contexts[i]):] = torch.tensor(contexts[i])
                mask[row, width - len(contexts[i]):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None, top_p=None,
                                 top_k=None)
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return answers


def answer_words(prompt: Prompt) -> list[tuple[str, int]]:
    """(word, label) pairs accepted in a generated answer: each label word, the label's name, its aliases."""
    pairs = []
    for label, name in enumerate(LABELS):
        for word in (prompt.label_words[label], name, *prompt.answer_aliases.get(name, ())):
            word = word.strip().lower()
            if word and (word, label) not in pairs:
                pairs.append((word, label))
    return pairs


def parse_answer(text: str, prompt: Prompt) -> int:
    """The label named first in a generated answer (whole words, any case); -1 when none is named. When two
    words start at the same place the longer wins ("no" inside "not" never matches: whole words only)."""
    lowered = text.lower()
    best = None
    for word, label in answer_words(prompt):
        found = re.search(r"(?<![a-z])" + re.escape(word) + r"(?![a-z])", lowered)
        if found and (best is None or (found.start(), -len(word)) < best[:2]):
            best = (found.start(), -len(word), label)
    return best[2] if best else -1


def score_with_unmatched(labels, preds, genres=None, pair_ids=None) -> dict:
    """metrics.score for predictions that may be -1 (an answer that named no label): those count as wrong;
    the confusion matrix and prediction distribution show them in an extra `unmatched` column."""
    labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    unmatched = preds < 0
    # A stand-in label that is surely wrong keeps accuracy and per-genre accuracy exact.
    filled = np.where(unmatched, (labels + 1) % len(LABELS), preds)
    result = score(labels, filled, genres, pair_ids)
    result["predictions"] = preds.tolist()  # as answered: -1 for an answer that named no label
    matrix = np.zeros((len(LABELS), len(LABELS) + 1), dtype=int)
    np.add.at(matrix, (labels, np.where(unmatched, len(LABELS), preds)), 1)
    result["confusion"] = matrix[:, : len(LABELS)].tolist()
    result["unmatched_by_gold"] = {name: int(matrix[i, -1]) for i, name in enumerate(LABELS)}
    # Macro-F1 with unmatched answers as misses: recall's denominator keeps them, precision ignores them.
    square = matrix[:, : len(LABELS)].astype(float)
    tp = np.diag(square)
    precision = np.divide(tp, square.sum(0), out=np.zeros_like(tp), where=square.sum(0) > 0)
    recall = np.divide(tp, matrix.sum(1), out=np.zeros_like(tp), where=matrix.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    result["macro_f1"] = float(f1.mean()) if unmatched.any() else macro_f1(result["confusion"])
    # The stand-in labels must not show up as predictions.
    result["prediction_distribution"] = {name: int((preds == i).sum()) for i, name in enumerate(LABELS)}
    result["prediction_distribution"]["unmatched"] = int(unmatched.sum())
    result["unmatched_share"] = float(unmatched.mean()) if len(preds) else 0.0
    return result
