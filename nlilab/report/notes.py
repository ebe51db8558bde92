"""Method notes for the report: what each method does and why its settings are what they are, in the project's
own words, each tied to this run's measured numbers through the findings (never a number typed in here).

A note is (title, list of HTML paragraphs). Paragraphs that depend on results appear only when the results
exist; facts from papers carry a link to their source.
"""

from __future__ import annotations

import html

from nlilab.report.findings import Finding, display_label, first, provenance_text
from nlilab.report.references import (
    ADAPTER_LR,
    ADAPTER_LR_RANGE,
    BF16_BITS,
    FULL_FT_LR,
    FULL_FT_LR_RANGE,
    NF4_BITS,
    seed_reference,
)

LINKS = {
    "lora": "https://arxiv.org/abs/2106.09685",
    "ptuning": "https://arxiv.org/abs/2103.10385",
    "ptuning_v2": "https://arxiv.org/abs/2110.07602",
    "prefix": "https://arxiv.org/abs/2101.00190",
    "qlora": "https://arxiv.org/abs/2305.14314",
    "harness": "https://github.com/EleutherAI/lm-evaluation-harness",
    "roberta": "https://arxiv.org/abs/1907.11692",
    "peft_ptuning": "https://github.com/huggingface/peft/tree/main/examples/sequence_classification",
}


def cite(key: str, words: str) -> str:
    return f'<a class="cite" href="{LINKS[key]}">{html.escape(words)}</a>'


def _measured(findings: list[Finding], topic: str, experiments: list[str]) -> list[str]:
    """The findings sentences about these experiments, as the 'measured here' part of a note."""
    out = []
    for name in experiments:
        f = first(findings, topic, name)
        if f:
            out.append(f.text)
    return out


def _measured_paragraph(sentences: list[str]) -> str:
    if not sentences:
        return ""
    return "<p class='measured'><b>Measured in this run:</b> " + html.escape(" ".join(sentences)) + "</p>"


def _of(results: dict, **match) -> list[str]:
    return [n for n, m in results.items() if all(m.get(k) == v for k, v in match.items())]


def fine_tuning(results: dict, findings: list[Finding]) -> tuple[str, list[str]]:
    others = _of(results, kind="encoder", method="top_layers") + _of(results, kind="encoder", method="lora")
    shares = [f"{display_label(n, results[n])}: {100 * results[n]['trainable_share']:.3g}% of the weights train"
              for n in results if results[n].get("kind") in ("encoder", "qlora")
              and results[n].get("trainable_share") is not None]
    paras = [
        "<p><b>All parameters.</b> Full fine-tuning updates every weight of the pretrained encoder together with a "
        "new three-way classification head. It is the most flexible and the most expensive option: the optimizer "
        "keeps two extra values per weight and the saved result is a whole copy of the model.</p>",
        "<p><b>Top layers.</b> The lower blocks stay frozen and only the last few transformer blocks and the head "
        "train. Back-propagation stops where the frozen part begins, so a step is cheaper, and the lower layers "
        "keep their general-purpose features; the price is that the frozen layers cannot adapt to the task.</p>",
        f"<p><b>LoRA</b> ({cite('lora', 'Hu et al. 2021')}) freezes every pretrained weight and learns, for chosen "
        "projection matrices (here the attention query and value), a low-rank update: the product of a "
        "narrow down-projection and up-projection of rank r, scaled by alpha / r. The up-projection starts at "
        "zero, so training begins exactly at the pretrained model. The classification head is new, so it trains "
        "in full. Only the adapter and the head need saving.</p>",
    ]
    pooled = sorted({(results[n].get("method_notes") or {}).get("pooling") for n in results
                     if results[n].get("kind") == "encoder"} - {None})
    if pooled:
        paras.append(
            "<p><b>What the head reads.</b> A BERT-style head classifies the [CLS] state (through a small "
            "'pooler'); a sentence-transformers model such as MiniLM was instead trained so that the <i>mean</i> "
            "of its token states carries the meaning, and its [CLS] path was never trained for a sentence-level "
            "task. When this project first trained MiniLM under the [CLS] head it stayed at chance (the README "
            "records those runs); the head now reads the mean of the real tokens' states (padding excluded). "
            "The pooling follows the model folder (<code>pooling: auto</code>): "
            "mean where it ships a sentence-transformers pooling config, the architecture's own head otherwise "
            f"(roberta-large). Used in this run: {html.escape(', '.join(pooled))}.</p>")
    if shares:
        paras.append("<p class='measured'><b>Trainable share in this run:</b> " + html.escape("; ".join(shares))
                     + ".</p>")
    paras.append(_measured_paragraph(_measured(findings, "versus_full", others)))
    return "Fine-tuning strategies: all parameters, top layers, LoRA", [p for p in paras if p]


def prompts(results: dict, findings: list[Finding]) -> tuple[str, list[str]]:
    soft = _of(results, kind="encoder", method="ptuning") + _of(results, kind="encoder", method="prefix")
    hard = _of(results, kind="prompting")
    paras = [
        "<p><b>Hard prompts</b> are text: an instruction and the premise and hypothesis written out in words, fed "
        "to a frozen language model that answers with a label word. Nothing is trained; the model's behaviour "
        "depends on the exact wording, which is why every prompting result here records its template.</p>",
        f"<p><b>Soft prompts</b> are vectors learned by gradient descent while the model stays frozen. P-tuning "
        f"({cite('ptuning', 'Liu et al. 2021')}) prepends a few virtual token embeddings, produced by a small "
        "encoder network, to the input layer only. Deep prompts (prefix tuning, "
        f"{cite('prefix', 'Li and Liang 2021')}; P-tuning v2, {cite('ptuning_v2', 'Liu et al. 2022')}) instead "
        "give every layer its own learned keys and values to attend to, so the prompt acts at every depth rather "
        "than having to steer the whole network from the first layer. Shallow soft prompts on a frozen encoder "
        "often end up predicting the majority class (PEFT's own "
        f"{cite('peft_ptuning', 'P-tuning example')} ends barely above it on MRPC), so both are reported next "
        "to that baseline.</p>",
    ]
    sentences = _measured(findings, "versus_full", soft)
    sentences += [f.text for f in findings if f.topic == "collapse" and f.values.get("experiment") in soft + hard]
    paras.append(_measured_paragraph(sentences))
    return "Hard and soft prompts", [p for p in paras if p]


def shots(results: dict, findings: list[Finding]) -> tuple[str, list[str]]:
    paras = [
        "<p><b>Zero-shot</b> prompting shows the model only the instruction and the pair to classify. "
        "<b>One-shot</b> prepends one solved example from the training split, so the model sees the answer format "
        "and the label words once before it has to produce them. Scoring can either compare the model's "
        "likelihood of each label word after the prompt (as "
        f"{cite('harness', 'lm-evaluation-harness')} does for MNLI, which always yields a valid label) or let it "
        "generate freely and map the text to a label, counting answers that match no label.</p>",
    ]
    templates = []
    for name in _of(results, kind="prompting"):
        prompt = results[name].get("prompt") or {}
        if prompt.get("template"):
            templates.append(f"<p>Template of {html.escape(name)} ({html.escape(str(prompt.get('name', '')))} "
                             f"v{html.escape(str(prompt.get('version', '')))}):</p>"
                             f"<pre>{html.escape(str(prompt['template']))}</pre>")
    paras += templates
    prov = sorted({provenance_text(results[n]) for n in _of(results, kind="prompting") if provenance_text(results[n])})
    if prov:
        paras.append("<p><b>The prompted model.</b> " + html.escape("; ".join(p[:1].upper() + p[1:] for p in prov))
                     + ".</p>")
    paras.append(_measured_paragraph([f.text for f in findings if f.topic == "prompting"]))
    return "Zero-shot and one-shot prompting", [p for p in paras if p]


def qlora(results: dict, findings: list[Finding]) -> tuple[str, list[str]]:
    paras = [
        f"<p><b>QLoRA</b> ({cite('qlora', 'Dettmers et al. 2023')}) stores the frozen base model's weights in 4 "
        "bits (the NormalFloat-4 format, whose levels are spaced for normally distributed weights) and "
        "dequantizes each block on the fly for the matrix products, computed in 16 or 32 bits. Gradients flow "
        "through the frozen quantized weights into LoRA adapters kept in full precision; here the model is a "
        "sequence classifier, so its new classification head also stays unquantized and trainable. Each "
        f"quantized weight takes {NF4_BITS} bits instead of {BF16_BITS}, plus small per-block constants, at some "
        "cost in speed; the footprint measured in this run is below.</p>",
    ]
    if any((results[n].get("weight_footprint_mb") or {}).get("embeddings_4bit") for n in _of(results, kind="qlora")):
        paras.append("<p>QLoRA quantizes the linear layers only. Where a run also stores its input embedding "
                     "table in NF4 (<code>quantize_embeddings: true</code>, marked in its footprint below), the "
                     "frozen table is looked up row by row and dequantized on the fly like the linear weights; "
                     "for a small model with a large vocabulary the table is a large share of the weights.</p>")
    stand_ins = sorted({f"{results[n].get('model')}: {provenance_text(results[n])}" for n in results
                        if provenance_text(results[n])})
    if stand_ins:
        paras.append("<p><b>The stand-in's weights.</b> " + html.escape("; ".join(stand_ins)) + ".</p>")
    paras.append(_measured_paragraph([f.text for f in findings if f.topic == "quantization"]
                                     + _measured(findings, "versus_full", _of(results, kind="qlora"))))
    return "How QLoRA works", [p for p in paras if p]


# (section, key, column title): the settings worth explaining, read from each run's recorded parameters.
HYPER_KEYS = (("train", "learning_rate", "learning rate"), ("train", "epochs", "epochs"),
              ("train", "batch_size", "batch"), ("train", "warmup_ratio", "warmup share"),
              ("train", "weight_decay", "weight decay"), ("train", "max_length", "max tokens"),
              ("lora", "r", "LoRA r"), ("lora", "alpha", "LoRA alpha"), ("lora", "dropout", "LoRA dropout"),
              ("top_layers", "k", "top layers k"), ("ptuning", "num_virtual_tokens", "P-tuning tokens"),
              ("prefix", "num_virtual_tokens", "prefix tokens"), ("seeds", None, "seeds"))


def _hyper_value(method: str, params: dict, section: str, key: str | None):
    if key is None:
        return params.get(section)
    method_sections = {"lora": "lora", "top_layers": "top_layers", "ptuning": "ptuning", "prefix": "prefix",
                       "qlora": "lora"}
    if section != "train" and method_sections.get(method) != section:  # a method's block only where it applies
        return None
    return (params.get(section) or {}).get(key)


def hyperparameters(results: dict, findings: list[Finding]) -> tuple[str, list[str]]:
    rows = []
    for name, m in results.items():
        params = (m.get("run_record") or {}).get("parameters") or {}
        if m.get("kind") not in ("encoder", "qlora") or not params:
            continue
        cells = [_hyper_value(m.get("method", ""), params, s, k) for s, k, _ in HYPER_KEYS]
        rows.append("<tr><td>" + html.escape(name) + "</td>" + "".join(
            f"<td>{'' if v is None else html.escape(f'{v:g}' if isinstance(v, float) else str(v))}</td>"
            for v in cells) + "</tr>")
    seed_lora, seed_full = seed_reference("lora").accuracy, seed_reference("full").accuracy
    head = "".join(f"<th>{html.escape(title)}</th>" for _, _, title in HYPER_KEYS)
    paras = []
    if rows:
        paras.append(f"<div class='scroll'><table><tr><th>experiment</th>{head}</tr>{''.join(rows)}</table></div>")
    paras += [
        f"<p><b>Learning rate.</b> Full fine-tuning moves pretrained weights, so it needs a small step: published "
        f"recipes for roberta-large use {FULL_FT_LR[0]} ({cite('roberta', 'Liu et al. 2019')}). Adapters and "
        f"prompts start from zero or from random values and change few parameters, so they need "
        f"{ADAPTER_LR_RANGE[0] / FULL_FT_LR_RANGE[1]:.0f} to {ADAPTER_LR_RANGE[1] / FULL_FT_LR_RANGE[0]:.0f} "
        f"times more, {ADAPTER_LR[0]} ({cite('lora', 'Hu et al. 2021')}). The seed report used the "
        f"full fine-tuning rate for LoRA as well (with r 16 and alpha 32), one candidate reason its LoRA number "
        f"is low ({seed_lora} against {seed_full} for full fine-tuning); where this profile runs LoRA at both "
        "settings, the measured difference, and every setting in which the two runs differ, is below.</p>",
        "<p><b>Warmup and weight decay.</b> A linear warmup over the first few percent of steps keeps the first "
        "updates to the fresh classification head from wrecking the pretrained weights, the usual cause of a "
        "run stuck at the majority class. Weight decay pulls weights gently towards zero, a mild regularizer "
        "that the published recipes all use.</p>",
        f"<p><b>LoRA rank and alpha.</b> Rank 8 with alpha 16 on query and value is the LoRA paper's setting for "
        f"roberta-large, and the same paper found very small ranks about as good as large ones on MultiNLI "
        f"({cite('lora', 'Hu et al. 2021, section 7.2')}). The seed report used rank 16 and alpha 32, which keeps "
        "the same scale alpha / r with twice the adapter parameters.</p>",
        "<p><b>Seeds and rows.</b> Each accuracy carries a 95% interval from a bootstrap over the evaluation "
        "rows combined with the seeds, and two methods scored on the same rows are compared by the paired "
        "interval of their difference: the findings call a difference 'not distinguishable on these N rows' "
        "whenever that interval contains zero.</p>",
    ]
    paras.append(_measured_paragraph([f.text for f in findings if f.topic in ("lora_seed", "sweep")]))
    return "Why these hyperparameters", [p for p in paras if p]


def all_notes(results: dict, findings: list[Finding]) -> list[tuple[str, list[str]]]:
    # Every note appears even where this profile does not run the method: they are part of the study.
    return [fine_tuning(results, findings), prompts(results, findings), shots(results, findings),
            qlora(results, findings), hyperparameters(results, findings)]
