"""Published figures the report stands this project's results next to, each with its citation.

These are *references*, not results: the report prints them in a table of their own, labelled as such, and never
mixes them into the findings computed from this run. Accuracies are MultiNLI dev-matched percentages unless
`split` says otherwise; times are training wall times as published.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    title: str
    url: str | None  # None where the project's notes name a source without a public address


@dataclass(frozen=True)
class Reference:
    method: str  # the nlilab method family it stands next to: full, lora, ptuning, prefix, zero_shot, ...
    label: str
    model: str
    accuracy: str  # text, because some are ranges or carry a spread ("90.6 ± 0.2")
    split: str
    train_time: str | None
    recipe: str
    source: Source


SEED = Source("the seed report (the course write-up this project reproduces; unpublished)", None)
ROBERTA = Source("Liu et al. 2019, RoBERTa: A Robustly Optimized BERT Pretraining Approach",
                 "https://arxiv.org/abs/1907.11692")
FAIRSEQ = Source("fairseq examples/roberta, GLUE results",
                 "https://github.com/facebookresearch/fairseq/tree/main/examples/roberta")
MODEL_CARDS = Source("public Hugging Face model cards of roberta-large fine-tuned on MNLI",
                     "https://huggingface.co/models?search=roberta-large-mnli")
LORA = Source("Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models, Table 2",
              "https://arxiv.org/abs/2106.09685")
LORA_REPO = Source("microsoft/LoRA repository README", "https://github.com/microsoft/LoRA")
PEFT_PTUNING = Source("Hugging Face PEFT, examples/sequence_classification/P_Tuning.ipynb",
                      "https://github.com/huggingface/peft/tree/main/examples/sequence_classification")
PTUNING_V2 = Source("Liu et al. 2022, P-Tuning v2 repository (THUDM/P-tuning-v2)",
                    "https://github.com/THUDM/P-tuning-v2")
STUDENT = Source("m-salmani78/llama3-multinli-qlora, a public repository doing the same assignment",
                 "https://github.com/m-salmani78/llama3-multinli-qlora")

# The seed report's own numbers: lr 2e-5 for all three methods, LoRA r 16 / alpha 32 / dropout 0.1, 3 epochs,
# fp16. It never ran its Llama-3 part, so it has no prompting or QLoRA numbers.
SEED_REPORT = (
    Reference("full", "full fine-tuning", "roberta-large (as the assignment asks)", "88.19", "matched", "1:16:22",
              "lr 2e-5, 3 epochs, fp16", SEED),
    Reference("lora", "LoRA", "roberta-large (as the assignment asks)", "79.51", "matched", "32:02",
              "lr 2e-5, r 16, alpha 32, dropout 0.1, 3 epochs, fp16", SEED),
    Reference("ptuning", "P-tuning", "roberta-large (as the assignment asks)", "87.82", "matched", "1:24:51",
              "lr 2e-5, 3 epochs, fp16", SEED),
)

PUBLISHED = (
    Reference("full", "full fine-tuning", "roberta-large", "90.2", "matched", None,
              "lr 1e-5, batch 32, 10 epochs, 6% warmup, weight decay 0.1", ROBERTA),
    Reference("full", "full fine-tuning", "roberta-large", "90.2", "matched", None,
              "the GLUE table of the official code release", FAIRSEQ),
    Reference("full", "full fine-tuning (Hugging Face Trainer)", "roberta-large", "90.3 to 90.5", "matched", None,
              "lr 2e-5, batch 64, 3 epochs, linear decay", MODEL_CARDS),
    Reference("lora", "LoRA", "roberta-large", "90.6 ± 0.2", "matched and mismatched", None,
              "r 8, alpha 16, query+value, lr 3e-4, batch 32, 10 epochs, 6% warmup, head trained", LORA),
    Reference("lora", "LoRA", "roberta-base", "87.5", "matched", None, "lr 5e-4, batch 16, 30 epochs", LORA_REPO),
    Reference("ptuning", "P-tuning (PEFT PromptEncoder)", "roberta-large", "none published for MNLI", "-", None,
              "20 virtual tokens, encoder hidden 128, lr 1e-3; on MRPC barely above the majority class",
              PEFT_PTUNING),
    Reference("prefix", "deep prompts (P-tuning v2)", "roberta-large", "86.6 (RTE, not MNLI)", "RTE dev", None,
              "prefix length 128, lr 5e-3, many epochs", PTUNING_V2),
    Reference("zero_shot", "zero-shot prompting", "Llama-3-8B", "40.5", "matched", None, "untuned prompt",
              STUDENT),
    Reference("one_shot", "one-shot prompting", "Llama-3-8B", "26.7", "matched", None, "untuned prompt", STUDENT),
    Reference("qlora", "QLoRA (as text generation)", "Llama-3-8B", "81.8", "matched", "1h 50m",
              "2% of train, r 4", STUDENT),
)

# Facts the method notes cite (with their sources): the learning-rate gap between full fine-tuning and adapters.
FULL_FT_LR = ("1e-5 to 2e-5", ROBERTA)
ADAPTER_LR = ("2e-4 to 5e-4", LORA)
FULL_FT_LR_RANGE = (1e-5, 2e-5)  # the same ranges as numbers, so the notes compute their ratio
ADAPTER_LR_RANGE = (2e-4, 5e-4)
# 4-bit NormalFloat storage against 16-bit weights (QLoRA, section 2): the bits per weight before block constants.
NF4_BITS, BF16_BITS = 4, 16


def seconds(hms: str) -> int:
    """'1:16:22' -> 4582; '32:02' -> 1922."""
    total = 0
    for part in hms.split(":"):
        total = total * 60 + int(part)
    return total


def seed_reference(method: str) -> Reference | None:
    return next((r for r in SEED_REPORT if r.method == method), None)
