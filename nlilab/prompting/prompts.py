"""Prompt designs as data: the YAML files in nlilab/prompting/prompts/, their checks, and rendering a prompt for one pair."""

from __future__ import annotations

import copy
import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nlilab import LABELS
from nlilab.errors import NlilabError, ParamsError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
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
