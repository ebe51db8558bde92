"""Zero-shot and few-shot prompting of a causal language model on NLI, without any training.

Prompts are data: each lives in `nlilab/prompts/<name>.yaml` (template, label words, system message, chat
template on/off, few-shot separator, version) and a profile picks one by name and may override fields. The full
prompt record, with a hash of its rendering, goes into metrics.json beside every score.

Two ways to read the model's answer:
- `loglik` (default): the label whose continuation (" True", " Neither", ...) the model finds most likely,
  exactly as lm-evaluation-harness scores multiple-choice tasks. Fast path: the prompt is computed once per
  example; when every label word is one token, that single forward pass gives all three scores from the last
  position. Longer label words are scored in the same pass, as branches of a small token tree (each branch sees
  the prompt and its own earlier tokens only). A prompt prefix shared by many examples (a demonstration, a
  system message) is computed once and reused through the KV cache.
- `generate`: greedy decoding of a few tokens, parsed back to a label; answers matching no label are counted.

One-shot demonstrations come from the train split only, chosen by seed; optionally the demonstration's label
rotates across examples so that no label is favoured. Contextual calibration (Zhao et al., 2021, "Calibrate
Before Use") divides out the label bias measured on content-free inputs such as "N/A".
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import EVAL_SPLITS, LABELS
from .costs import SeedMeter, cost_summary, scoring_window, shared_step
from .errors import NlilabError, ParamsError
from .metrics import macro_f1, score
from .progress import bar

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
RUN_FILE = "run.json"
PLACEHOLDERS = {"premise", "hypothesis"}
# A shared prompt prefix shorter than this is not worth a separate forward pass and a cache copy.
MIN_SHARED_PREFIX = 8


# ================================================================================================= prompts
@dataclass(frozen=True)
class Prompt:
    """One prompt design. `label_words` follow LABELS order (entailment, neutral, contradiction)."""

    name: str
    version: int
    template: str
    label_words: tuple[str, str, str]
    title: str = ""
    description: str = ""
    system: str | None = None
    chat_template: bool = False
    fewshot_separator: str = "\n\n"
    hypothesis_period: bool = False
    add_special_tokens: bool = False
    answer_aliases: dict = field(default_factory=dict)  # label -> extra words accepted in generated answers
    source: str = ""  # the file it was read from

    def record(self) -> dict:
        out = asdict(self)
        out["label_words"] = dict(zip(LABELS, self.label_words))
        out["template_sha256"] = _sha256(json.dumps({k: v for k, v in out.items() if k != "source"},
                                                    sort_keys=True))
        return out


PROMPT_FIELDS = {"name", "version", "title", "description", "template", "label_words", "system", "chat_template",
                 "fewshot_separator", "hypothesis_period", "add_special_tokens", "answer_aliases"}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def available_prompts() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def prompt_path(name: str) -> Path:
    """A shipped prompt by name, or a YAML file path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name).expanduser()
    return PROMPTS_DIR / f"{name}.yaml"


def _template_problems(template: str) -> list[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:  # unbalanced braces
        return [f"template: not a valid format string ({exc})"]
    problems = []
    if fields - PLACEHOLDERS:
        problems.append(f"template: unknown placeholder(s) {sorted(fields - PLACEHOLDERS)}; "
                        "expected {premise} and {hypothesis}")
    if PLACEHOLDERS - fields:
        problems.append(f"template: missing placeholder(s) {sorted(PLACEHOLDERS - fields)}")
    return problems


def _prompt_problems(raw: dict) -> list[str]:
    problems = [f"{k}: unknown prompt field; expected one of {', '.join(sorted(PROMPT_FIELDS))}"
                for k in raw if k not in PROMPT_FIELDS]
    for key in ("name", "template"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(f"{key}: expected a non-empty string, got {raw.get(key)!r}")
    if not isinstance(raw.get("version"), int) or isinstance(raw.get("version"), bool):
        problems.append(f"version: expected an integer, got {raw.get('version')!r}")
    if isinstance(raw.get("template"), str):
        problems += _template_problems(raw["template"])
    words = raw.get("label_words")
    if not isinstance(words, dict) or set(words) != set(LABELS):
        problems.append(f"label_words: expected a mapping with exactly {', '.join(LABELS)}, got {words!r}")
    elif any(not isinstance(w, str) or not w.strip() for w in words.values()):
        problems.append(f"label_words: every label word must be non-blank text, got {words!r}")
    elif len({w.strip().lower() for w in words.values()}) != len(LABELS):
        problems.append(f"label_words: the three label words must differ, got {words!r}")
    for key in ("chat_template", "hypothesis_period", "add_special_tokens"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append(f"{key}: expected true or false, got {raw[key]!r}")
    if raw.get("system") is not None and not isinstance(raw["system"], str):
        problems.append(f"system: expected text or null, got {raw['system']!r}")
    if "fewshot_separator" in raw and not isinstance(raw["fewshot_separator"], str):
        problems.append(f"fewshot_separator: expected text, got {raw['fewshot_separator']!r}")
    aliases = raw.get("answer_aliases") or {}
    if not isinstance(aliases, dict) or set(aliases) - set(LABELS) or any(
            not isinstance(v, list) or not all(isinstance(w, str) and w.strip() for w in v) for v in aliases.values()):
        problems.append(f"answer_aliases: expected a mapping of label to a list of words, got {aliases!r}")
    return problems


def load_prompt(name: str, overrides: dict | None = None) -> Prompt:
    """Read a prompt file and apply a profile's overrides (keys whose value is None keep the file's value)."""
    import yaml

    path = prompt_path(name)
    if not path.is_file():
        raise ParamsError(f"prompt '{name}': no file {path}; shipped prompts: {', '.join(available_prompts())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: YAML syntax error: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of prompt fields, got {type(raw).__name__}")
    problems = [f"{path}: {p}" for p in _prompt_problems(raw)]
    if problems:
        raise ParamsError("\n".join(problems))
    merged = copy.deepcopy(raw)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and k != "name"}
    expected_version = overrides.pop("version", None)
    if expected_version is not None and expected_version != raw["version"]:
        raise ParamsError(f"prompt '{name}': the profile expects version {expected_version} but {path} is "
                          f"version {raw['version']}; the prompt changed, so check it and update the profile")
    if "label_words" in overrides:
        merged["label_words"] = {**raw["label_words"], **{k: v for k, v in overrides.pop("label_words").items()
                                                          if v is not None}}
    merged.update(overrides)
    problems = [f"prompt '{name}' with the profile's overrides: {p}" for p in _prompt_problems(merged)]
    if problems:
        raise ParamsError("\n".join(problems))
    return Prompt(
        name=merged["name"], version=merged["version"], template=merged["template"],
        label_words=tuple(merged["label_words"][label] for label in LABELS),
        title=merged.get("title") or merged["name"], description=merged.get("description") or "",
        system=merged.get("system"), chat_template=merged.get("chat_template", False),
        fewshot_separator=merged.get("fewshot_separator", "\n\n"),
        hypothesis_period=merged.get("hypothesis_period", False),
        add_special_tokens=merged.get("add_special_tokens", False),
        answer_aliases={k: tuple(v) for k, v in (merged.get("answer_aliases") or {}).items()},
        source=str(path))


# ================================================================================================ rendering
def fill(prompt: Prompt, premise: str, hypothesis: str) -> str:
    """The template filled with one pair. Like the harness, the hypothesis is stripped and ends in '.'."""
    if prompt.hypothesis_period:
        hypothesis = hypothesis.strip()
        hypothesis = hypothesis if hypothesis.endswith(".") else hypothesis + "."
    return prompt.template.format(premise=premise, hypothesis=hypothesis)


def build_context(prompt: Prompt, premise: str, hypothesis: str, demos=(), tokenizer=None) -> str:
    """Everything the model reads before the answer: demonstrations (each with its label word), then the pair.

    Plain prompts join the blocks with the few-shot separator (a blank line in the harness); chat prompts turn
    each demonstration into a user turn and an assistant reply, and end with the assistant's turn opened.
    """
    query = fill(prompt, premise, hypothesis)
    if prompt.chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise NlilabError(f"prompt '{prompt.name}' uses the chat template but the tokenizer has none; "
                              "use a plain prompt such as harness_mnli")
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        for demo in demos:
            messages.append({"role": "user", "content": fill(prompt, demo["premise"], demo["hypothesis"])})
            messages.append({"role": "assistant", "content": prompt.label_words[demo["label"]].strip()})
        messages.append({"role": "user", "content": query})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [fill(prompt, d["premise"], d["hypothesis"]) + prompt.label_words[d["label"]] for d in demos]
    if prompt.system:
        blocks.insert(0, prompt.system)
    return prompt.fewshot_separator.join(blocks + [query])


def prompt_record(prompt: Prompt, tokenizer=None) -> dict:
    """The prompt's fields plus its rendering on placeholder text (through the chat template when it has one)
    and that rendering's hash: what metrics.json stores beside every score."""
    record = prompt.record()
    demo = {"premise": "<demo premise>", "hypothesis": "<demo hypothesis>", "label": 0}
    for key, demos in (("rendered", ()), ("rendered_one_shot", (demo,))):
        try:
            record[key] = build_context(prompt, "<premise>", "<hypothesis>", demos, tokenizer)
        except NlilabError:
            record[key] = None
    record["rendered_sha256"] = _sha256(record["rendered"]) if record["rendered"] is not None else None
    return record


# =========================================================================================== demonstrations
@dataclass
class DemoPlan:
    """Which train rows serve as demonstrations. `per_label` holds one row per label when labels rotate."""

    seed: int
    rotate: bool
    rows: list[dict]  # the demonstration rows (1 when fixed, 3 when rotating)

    def for_example(self, index: int) -> list[dict]:
        if not self.rows:
            return []
        # Rotation: example i sees a demonstration of label (i + seed) mod 3, so each label is shown to a third.
        return [self.rows[(index + self.seed) % len(self.rows)]] if self.rotate else [self.rows[0]]

    def group(self, index: int) -> int:
        """Examples with the same demonstration share a prompt prefix (computed once)."""
        return (index + self.seed) % len(self.rows) if self.rotate and self.rows else 0

    def groups(self) -> list[list[dict]]:
        """The demonstrations of each group, in group order (one empty group for zero-shot)."""
        return [[row] for row in self.rows] if self.rotate and self.rows else [self.for_example(0)]

    def record(self) -> list[dict]:
        return [{"pairID": r["pairID"], "label": LABELS[r["label"]], "premise": r["premise"],
                 "hypothesis": r["hypothesis"]} for r in self.rows]


def choose_demos(train, seed: int, shots: int, rotate: bool, exclude_ids=()) -> DemoPlan:
    """Demonstrations drawn from the train split by `seed` (never from an evaluated split: rows whose pairID
    appears in `exclude_ids` are skipped as a guard against overlapping files)."""
    if shots == 0:
        return DemoPlan(seed, rotate, [])
    if shots != 1:
        raise NlilabError(f"only zero-shot and one-shot prompting are supported, got {shots} shots")
    labels = np.asarray(train["label"], dtype=int)
    excluded = set(exclude_ids)
    allowed = np.array([pid not in excluded for pid in train["pairID"]], dtype=bool)
    rng = np.random.default_rng(seed)
    wanted = range(len(LABELS)) if rotate else [None]
    rows = []
    for label in wanted:
        pool = np.flatnonzero(allowed & ((labels == label) if label is not None else True))
        if len(pool) == 0:
            raise NlilabError(f"no train row{'' if label is None else ' with label ' + LABELS[label]} is "
                              "available as a demonstration")
        rows.append(dict(train[int(rng.choice(pool))]))
    return DemoPlan(seed, rotate, rows)


# ============================================================================================ tokenization
@dataclass
class Request:
    """One example to score: its context tokens and each label's continuation tokens."""

    context: list[int]
    continuations: tuple[list[int], ...]
    group: int = 0  # requests of one group share a prompt prefix
    truncated: bool = False


def _ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def encode_requests(tokenizer, contexts: list[str], label_words, add_special_tokens: bool = False,
                    max_length: int | None = None, groups=None) -> list[Request]:
    """Tokenize contexts and continuations the way lm-evaluation-harness does: trailing spaces of the context
    move to the continuation, and the continuation's tokens are those of (context + continuation) after the
    context's own tokens, so that a word fused across the boundary is still scored as the model sees it."""
    moved = [c[len(c.rstrip(" ")):] for c in contexts]
    stripped = [c.rstrip(" ") for c in contexts]
    ctx_ids = _ids(tokenizer, stripped, add_special_tokens)
    wholes = [_ids(tokenizer, [s + m + w for s, m in zip(stripped, moved)], add_special_tokens) for w in label_words]
    requests = []
    for i, ctx in enumerate(ctx_ids):
        conts = tuple(whole[i][len(ctx):] for whole in wholes)
        for word, cont in zip(label_words, conts):
            if not cont:
                raise NlilabError(f"label word {word!r} adds no token after the context; check the prompt")
        truncated = False
        if max_length is not None:
            keep = max_length - max(len(c) for c in conts)
            if len(ctx) > keep:  # drop the oldest tokens: the question and answer slot sit at the end
                ctx, truncated = ctx[len(ctx) - keep:], True
        requests.append(Request(ctx, conts, groups[i] if groups is not None else 0, truncated))
    return requests


# ========================================================================================= scoring engine
def _shared_prefix_len(sequences: list[list[int]]) -> int:
    """Length of the token prefix common to every sequence, leaving each at least one token of its own (the
    last context position must be computed per example: it predicts the answer)."""
    first = sequences[0]
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


def _row_layout(request: Request, prefix: int):
    """Tokens, positions and targets of one row: the context after the shared prefix, then each label's branch
    (its continuation minus the last token, which is only ever predicted). Targets are
    (source position, token id, label): the hidden state at `source` predicts `token id`."""
    suffix = request.context[prefix:]
    tokens, positions, targets = list(suffix), list(range(prefix, prefix + len(suffix))), []
    spans = []
    for label, cont in enumerate(request.continuations):
        start = len(tokens)
        branch = cont[:-1]
        tokens += branch
        positions += range(prefix + len(suffix), prefix + len(suffix) + len(branch))
        spans.append((start, start + len(branch)))
        for j, token in enumerate(cont):
            targets.append((len(suffix) - 1 if j == 0 else start + j - 1, token, label))
    return tokens, positions, targets, len(suffix), spans


def _tree_mask(layouts, width: int, prefix: int, dtype, device):
    """Additive 4D mask (batch, 1, width, prefix + width): context tokens are causal; each branch sees the
    whole context and its own earlier tokens, never another label's branch. Works for eager and SDPA."""
    import torch

    allowed = torch.zeros(len(layouts), 1, width, prefix + width, dtype=torch.bool)
    allowed[:, :, :, :prefix] = True
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    for row, (tokens, _, _, n_ctx, spans) in enumerate(layouts):
        block = allowed[row, 0, :, prefix:]
        block[:n_ctx, :n_ctx] = causal[:n_ctx, :n_ctx]
        for start, end in spans:
            block[start:end, :n_ctx] = True
            block[start:end, start:end] = causal[: end - start, : end - start]
        for pad in range(len(tokens), width):  # padding rows attend to themselves only (no empty softmax rows)
            block[pad, pad] = True
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).to(device)


class LoglikScorer:
    """Sum of log-probabilities of each label's continuation, for many requests, batched and sorted by length.

    Runs the decoder body, then the output head only at the positions that predict an answer token (one per
    example when label words are single tokens), which skips the vocabulary projection everywhere else.
    """

    def __init__(self, model, batch_size: int = 16, progress: bool = True):
        self.model = model
        self.body = model.get_decoder()
        self.head = model.get_output_embeddings()
        if getattr(model.config, "final_logit_softcapping", None):
            raise NlilabError("models with final logit soft-capping are not supported by the prompt scorer")
        self.batch_size = batch_size
        self.progress = progress
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.stats = {"forward_passes": 0, "padded_tokens": 0, "real_tokens": 0, "shared_prefix_tokens": 0}

    def score(self, requests: list[Request], desc: str = "score") -> np.ndarray:
        """(n, 3) log-likelihoods, in the order of `requests`."""
        import torch

        out = np.zeros((len(requests), len(requests[0].continuations) if requests else 0), dtype=np.float64)
        plan = []
        for group in sorted({r.group for r in requests}):
            members = [i for i, r in enumerate(requests) if r.group == group]
            prefix = _shared_prefix_len([requests[i].context for i in members]) if len(members) > 1 else 0
            prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
            # Longest first: the first batch shows at once whether memory suffices, and neighbours pad little.
            members.sort(key=lambda i: -(len(requests[i].context) + sum(len(c) for c in requests[i].continuations)))
            plan += [(group, prefix, members[k:k + self.batch_size]) for k in range(0, len(members), self.batch_size)]
        caches = {}
        with torch.inference_mode():
            for group, prefix, batch in bar(plan, desc=desc, disable=not self.progress, leave=False):
                with shared_step():  # another process's timing window pauses this one between batches
                    if prefix and group not in caches:
                        caches[group] = self._prefix_cache(requests[batch[0]].context[:prefix])
                    out[batch] = self._score_batch([requests[i] for i in batch], prefix, caches.get(group))
        return out

    def _prefix_cache(self, tokens: list[int]):
        import torch

        ids = torch.tensor([tokens], device=self.device)
        self.stats["shared_prefix_tokens"] += len(tokens)
        return self.body(input_ids=ids, use_cache=True).past_key_values

    def _score_batch(self, batch: list[Request], prefix: int, cache) -> np.ndarray:
        import torch

        layouts = [_row_layout(r, prefix) for r in batch]
        width = max(len(lay[0]) for lay in layouts)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        pos = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (tokens, positions, *_rest) in enumerate(layouts):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            pos[row, : len(tokens)] = torch.tensor(positions)
            pos[row, len(tokens):] = torch.arange(positions[-1] + 1, positions[-1] + 1 + width - len(tokens))
        branched = any(end > start for lay in layouts for start, end in lay[4])
        # Without branches, right padding needs no mask: a causal model's real tokens never see later padding.
        mask = _tree_mask(layouts, width, prefix, self.dtype, self.device) if branched else None
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(batch))
        hidden = self.body(input_ids=ids.to(self.device), position_ids=pos.to(self.device), attention_mask=mask,
                           cache=past, use_cache=past is not None).last_hidden_state
        rows = [row for row, lay in enumerate(layouts) for _ in lay[2]]
        sources = [t[0] for lay in layouts for t in lay[2]]
        tokens = torch.tensor([t[1] for lay in layouts for t in lay[2]], device=self.device)
        labels = [t[2] for lay in layouts for t in lay[2]]
        picked = hidden[torch.tensor(rows, device=self.device), torch.tensor(sources, device=self.device)]
        logprobs = torch.log_softmax(self.head(picked).float(), dim=-1)
        chosen = logprobs[torch.arange(len(rows), device=self.device), tokens].double().cpu().numpy()
        scores = np.zeros((len(batch), len(batch[0].continuations)))
        np.add.at(scores, (np.asarray(rows), np.asarray(labels)), chosen)
        real = sum(len(lay[0]) for lay in layouts)
        self.stats["forward_passes"] += 1
        self.stats["real_tokens"] += real
        self.stats["padded_tokens"] += len(batch) * width - real
        return scores


def reference_loglikelihoods(model, requests: list[Request]) -> np.ndarray:
    """The plain way, one full forward pass per (example, label): the check the fast scorer is tested against."""
    import torch

    out = np.zeros((len(requests), len(requests[0].continuations)))
    with torch.inference_mode():
        for i, req in enumerate(requests):
            for label, cont in enumerate(req.continuations):
                ids = torch.tensor([req.context + cont[:-1]], device=model.device)
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
                positions = range(len(req.context) - 1, len(req.context) - 1 + len(cont))
                out[i, label] = sum(float(logprobs[p, t]) for p, t in zip(positions, cont))
    return out


# ============================================================================================= calibration
def calibrate(scores: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Contextual calibration: label log-probabilities (normalized over the labels) minus the log of the mean
    label probability the model gave to content-free inputs with the same demonstrations."""
    return _label_logprobs(scores) - np.log(bias)


def _label_logprobs(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def content_free_bias(scores: np.ndarray) -> np.ndarray:
    """Mean label distribution over the content-free inputs' scores (rows)."""
    return np.exp(_label_logprobs(scores)).mean(axis=0)


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


# ============================================================================================= experiment
def load_model(path: str, config: dict, device: str):
    """Tokenizer and causal LM in the profile's precision, in eval mode, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config["precision"]]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return tokenizer, model


def experiment_prompt(config: dict) -> Prompt:
    overrides = {k: v for k, v in config["prompt"].items() if k != "name"}
    return load_prompt(config["prompt"]["name"], overrides)


def method_label(config: dict, prompt: Prompt) -> str:
    shots = "zero-shot" if config["mode"] == "zero_shot" else "one-shot"
    extras = [prompt.title]
    if config["scoring"] == "generate":
        extras.append("generation")
    if config["calibration"] == "contextual":
        extras.append("calibrated")
    return f"{shots} ({', '.join(extras)})"


def prompting_seeds(config: dict) -> list[int]:
    """One-shot: one run per seed (each draws its own demonstrations). Zero-shot is deterministic: one run."""
    if config["mode"] == "zero_shot":
        return [config["seed"]]
    return list(config.get("seeds") or [config["seed"]])


class Session:
    """What every split and seed of one experiment shares: data, prompt, tokenizer, model, scorer."""

    def __init__(self, config: dict, data, prompt: Prompt, tokenizer, model):
        self.config, self.data, self.prompt, self.tokenizer, self.model = config, data, prompt, tokenizer, model
        self.scorer = LoglikScorer(model, config["batch_size"])

    def contexts(self, split: str, plan: DemoPlan) -> list[str]:
        ds = self.data[split]
        return [build_context(self.prompt, p, h, plan.for_example(i), self.tokenizer)
                for i, (p, h) in enumerate(zip(ds["premise"], ds["hypothesis"]))]

    def requests(self, contexts: list[str], groups) -> list[Request]:
        return encode_requests(self.tokenizer, contexts, self.prompt.label_words, self.prompt.add_special_tokens,
                               self.config["max_length"], groups)

    def bias(self, plan: DemoPlan) -> dict[int, np.ndarray]:
        """Per demonstration group: the label distribution on content-free inputs."""
        out = {}
        for group, demos in enumerate(plan.groups()):
            contexts = [build_context(self.prompt, text, text, demos, self.tokenizer)
                        for text in self.config["content_free_inputs"]]
            scores = self.scorer.score(self.requests(contexts, None), desc="content-free")
            out[group] = content_free_bias(scores)
        return out

    def window(self, plan: DemoPlan) -> dict:
        """Examples per second on one core with nothing else of nlilab running (nlilab.costs.scoring_window), on
        the first rows of dev-matched: the same rows for every prompting experiment of a profile."""
        split = EVAL_SPLITS[0]
        groups = [plan.group(i) for i in range(len(self.data[split]))]
        requests = self.requests(self.contexts(split, plan), groups)
        if self.config["scoring"] == "generate":
            def run(rows):
                generate_answers(self.model, self.tokenizer, [r.context for r in rows],
                                 self.config["max_new_tokens"], self.config["batch_size"])
        else:
            quiet = LoglikScorer(self.model, self.config["batch_size"], progress=False)

            def run(rows):
                quiet.score(rows, desc="window")
        return scoring_window(run, requests)

    def evaluate(self, split: str, plan: DemoPlan, bias: dict | None) -> dict:
        """Predictions and metrics for one split; the timed region covers prompt building, tokenization and
        the model, not the model's loading."""
        ds = self.data[split]
        labels = np.asarray(ds["label"], dtype=int)
        started = time.perf_counter()
        groups = [plan.group(i) for i in range(len(ds))]
        requests = self.requests(self.contexts(split, plan), groups)
        extra = {}
        if self.config["scoring"] == "generate":
            answers = generate_answers(self.model, self.tokenizer, [r.context for r in requests],
                                       self.config["max_new_tokens"], self.config["batch_size"])
            preds = np.array([parse_answer(a, self.prompt) for a in answers], dtype=int)
            extra["answers_sample"] = answers[:20]
        else:
            scores = self.scorer.score(requests, desc=split)
            preds = scores.argmax(axis=1)
            if bias is not None:
                extra["uncalibrated_accuracy"] = float((preds == labels).mean())
                preds = np.stack([calibrate(scores[i], bias[g]) for i, g in enumerate(groups)]).argmax(axis=1)
        wall = time.perf_counter() - started
        result = score_with_unmatched(labels, preds, ds["genre"], ds["pairID"])
        result.update(extra, eval_wall_time_s=wall, examples_per_second=len(ds) / wall if wall > 0 else None,
                      truncated_prompts=sum(r.truncated for r in requests),
                      context_tokens_mean=float(np.mean([len(r.context) for r in requests])))
        return result


def run_seed(session: Session, seed: int, run_dir: Path, window: bool = False) -> dict:
    """Score both dev splits with one draw of demonstrations; written atomically, read back when finished.
    `window`: time the scoring first (see `Session.window`)."""
    from .results import atomic_write_json, peak_memory_mb, read_json

    finished = read_json(Path(run_dir) / RUN_FILE)
    if finished is not None:
        return finished
    config, data = session.config, session.data
    eval_ids = {pid for split in EVAL_SPLITS for pid in data[split]["pairID"]}
    shots = 0 if config["mode"] == "zero_shot" else 1
    plan = choose_demos(data["train"], seed, shots, config["rotate_demo_labels"], eval_ids)
    timed = session.window(plan) if window else None
    bias = session.bias(plan) if config["calibration"] == "contextual" else None
    run = {"seed": seed, "window": timed, "demonstrations": plan.record(), "rotate_demo_labels": plan.rotate and bool(plan.rows),
           "content_free_bias": {str(g): dict(zip(LABELS, b.tolist())) for g, b in bias.items()} if bias else None}
    with SeedMeter() as meter:  # this seed's own time and peak memory, whatever ran before it
        for split in EVAL_SPLITS:
            run[split] = session.evaluate(split, plan, bias)
    run["cost"] = meter.record()
    run.update(peak_memory_mb())
    atomic_write_json(Path(run_dir) / RUN_FILE, run)
    return run


def summarize(runs: list[dict], data, config: dict, prompt: Prompt, prompt_rec: dict, model_info: dict) -> dict:
    """The experiment's metrics.json body: the same split metrics as the encoder experiments, plus the prompt."""
    from .metrics import aggregate_split
    from .training import baselines, flag_collapse

    base = baselines(data)
    out = {split: aggregate_split([r[split] for r in runs]) for split in EVAL_SPLITS}
    for split in EVAL_SPLITS:
        out[split]["unmatched_share"] = float(np.mean([r[split]["unmatched_share"] for r in runs]))
        out[split]["examples_per_second"] = float(np.mean([r[split]["examples_per_second"] for r in runs]))
        gold = np.bincount(np.asarray(data[split]["label"], dtype=int), minlength=len(LABELS))
        out[split]["gold_distribution"] = {name: int(c) for name, c in zip(LABELS, gold)}
    n_eval = sum(len(data[s]) for s in EVAL_SPLITS) * len(runs)
    wall = sum(r[s]["eval_wall_time_s"] for r in runs for s in EVAL_SPLITS)
    generated = config["scoring"] == "generate"
    out.update(
        majority_baseline=base, collapsed=flag_collapse(out, base), history=[],
        method=config["mode"], method_label=method_label(config, prompt),
        mode=config["mode"], scoring=config["scoring"], calibration=config["calibration"],
        prompt=prompt_rec, seeds=[r["seed"] for r in runs],
        unmatched_share=float(np.mean([r[s]["unmatched_share"] for r in runs for s in EVAL_SPLITS]))
        if generated else None,
        eval_wall_time_s=wall, examples_per_second=n_eval / wall if wall > 0 else None,
        train_wall_time_s=None, train_samples_per_second=None,
        cpu_rss_peak_mb=float(max(r["cpu_rss_peak_mb"] for r in runs)),
        gpu_peak_mb=max((r.get("gpu_peak_mb") or 0.0 for r in runs), default=None) or None,
        runs=runs, **model_info)
    if all("cost" in r for r in runs):
        window = next((r["window"] for r in runs if r.get("window")), None)
        out["cost"] = cost_summary([r["cost"] for r in runs], window, activity="eval")
    return out


def run(config: dict) -> dict:
    """Score the experiment's prompt on both dev splits (once per seed for one-shot); write metrics.json."""
    from .data import load_nli
    from .models import resolve_model
    from .results import count_parameters, experiment_dir, write_metrics
    from .training import resolve_device

    # Cheapest refusals first: GPU-only settings without a GPU, a model that cannot be had, a broken prompt.
    device = resolve_device(config)
    resolved = resolve_model(config["model"], config.get("revision"))
    prompt = experiment_prompt(config)
    data = load_nli(config["data"], seed=config["seed"])
    tokenizer, model = load_model(resolved.path, config, device)
    session = Session(config, data, prompt, tokenizer, model)
    out_dir = experiment_dir(config)
    runs = [run_seed(session, seed, out_dir / f"seed_{seed}", window=i == 0)
            for i, seed in enumerate(prompting_seeds(config))]
    counts = count_parameters(model)
    model_info = {"model": config["model"], "model_path": resolved.path, "model_provenance": resolved.provenance,
                  "precision": config["precision"],
                  "device": device, "trainable_params": 0, "total_params": counts["total_params"],
                  "trainable_share": 0.0, "data_source": data.source, "data_fingerprint": data.fingerprint,
                  "dropped_unlabeled": data.dropped_unlabeled,
                  "data_sizes": {split: len(ds) for split, ds in data.splits.items()},
                  "scorer_stats": dict(session.scorer.stats)}
    metrics = summarize(runs, data, config, prompt, prompt_record(prompt, tokenizer), model_info)
    write_metrics(config, metrics)
    return metrics
