"""How long each experiment of the `gpu` profile should take on a T4-class and an H100-class GPU: an ESTIMATE from
arithmetic, not a measurement, until `gpu_check.py --throughput` has run on the card.

    .venv/bin/python bench/gpu_estimate.py [--profile gpu] [--utilization 0.2]

time = FLOPs / (the datasheet's dense 16-bit tensor peak x an assumed utilization). The inputs, and where each
comes from:
- parameters: the architectures' published configs (nlilab/models/architectures.py), counted on the meta device;
  the embedding tables do no multiply-adds and are left out;
- FLOPs per token: 2 per parameter forward, 4 more backward (Kaplan et al., 2020, "Scaling Laws for Neural
  Language Models", section 2.1): full fine-tuning 6N; methods whose base is frozen (LoRA, P-tuning, deep prompts)
  skip the weights' gradients, 4N; top layers 2N + 4N k/L; QLoRA with gradient checkpointing recomputes the
  forward, 6N with frozen weights; scoring 2N. Attention's own FLOPs (under 1% at these lengths) are left out;
- rows: the profile's sizes, MultiNLI's split sizes from the dataset card (train 392,702, dev 9,815 + 9,832);
- tokens per pair: 40.4, from the 52.4 tokens per harness prompt measured on 300 real dev-matched rows
  (bench/README.md, "One-shot") less the template's 12 (both with SmolLM2's tokenizer, a 49K BPE like
  roberta's 50K; Llama 3's 128K vocabulary makes fewer); + 4 special tokens for roberta, + 11 for QLoRA's
  "Premise: ... Hypothesis: ..." input; x 1.05 for the padding of length-grouped batches (ASSUMED);
- peaks: NVIDIA datasheets (T4: 65 TFLOPS FP16 tensor; H100 SXM: 989 TFLOPS BF16 dense, half the sparse 1,979);
- utilization: ASSUMED, 20% of that peak for 16-bit work and 10% for bitsandbytes 4-bit layers (their
  dequantization); `gpu_check.py --throughput` measures the real share and replaces it.
Model download and loading times are not included.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.models.architectures import known_config  # noqa: E402
from nlilab.models.memory import GiB, cached_shape, plan_experiment  # noqa: E402


@dataclass(frozen=True)
class Card:
    name: str
    peak_tflops: float  # dense FP16/BF16 tensor peak, datasheet
    memory_gib: float
    source: str


CARDS = {
    "T4": Card("NVIDIA T4", 65.0, 16, "NVIDIA T4 datasheet: 65 TFLOPS mixed precision (FP16/FP32), 16 GB"),
    "L4": Card("NVIDIA L4", 121.0, 24, "NVIDIA L4 datasheet: 242 TFLOPS FP16 tensor with sparsity, 121 dense"),
    "A100": Card("NVIDIA A100", 312.0, 80, "NVIDIA A100 datasheet: 312 TFLOPS BF16 tensor (dense)"),
    "H100": Card("NVIDIA H100 SXM", 989.0, 80, "NVIDIA H100 datasheet: 1,979 TFLOPS BF16 with sparsity, 989 dense"),
}
UTILIZATION = 0.20  # ASSUMED share of the peak reached by 16-bit training and scoring
UTILIZATION_4BIT = 0.10  # ASSUMED for bitsandbytes 4-bit layers (dequantized on the fly)
MNLI_TRAIN, MNLI_DEV = 392_702, 9_815 + 9_832  # nyu-mll/multi_nli dataset card
PAIR_TOKENS = 52.4 - 12  # measured harness prompt length less its template (bench/README.md)
PADDING = 1.05  # ASSUMED padding of length-grouped batches
ENCODER_TOKENS = (PAIR_TOKENS + 4) * PADDING  # <s> A </s></s> B </s>
QLORA_TOKENS = (PAIR_TOKENS + 11) * PADDING  # "Premise: " ... "\nHypothesis: " and BOS
PROMPT_TOKENS = 52.4 + 1  # the harness row and its one-token answer; a shared prefix is computed once


def body_params(model: str) -> float:
    shape = cached_shape(known_config(model))
    return float(shape.params - shape.embedding_params)


def train_factor(config: dict, layers: int) -> float:
    """FLOPs per parameter per token of one training step (forward and backward)."""
    if config["kind"] == "qlora":
        return 6.0  # forward, forward again (checkpointing), input gradients; the 4-bit weights are frozen
    method = config.get("method", "full")
    if method == "full":
        return 6.0
    if method == "top_layers":
        return 2.0 + 4.0 * config["top_layers"]["k"] / layers
    return 4.0


def _rows(limit: int | None, pool: int) -> int:
    return min(limit, pool) if limit else pool


def prompts_in_4_bits(config: dict, card: Card) -> bool:
    """What the memory preflight chooses for this card (quantization: auto takes 4 bits where 16 do not fit)."""
    if config["quantization"] != "auto":
        return config["quantization"] == "nf4"
    return plan_experiment(config, int(card.memory_gib * GiB), known_config(config["model"])).weights == "nf4"


def work(config: dict, card: Card) -> tuple[float, float]:
    """(16-bit FLOPs, 4-bit FLOPs) of one experiment on `card`."""
    data = config["data"]
    test_rows = _rows(data["eval_limit"] and 2 * data["eval_limit"], MNLI_DEV)
    if config["kind"] == "data":
        return 0.0, 0.0
    n = body_params(config["model"])
    if config["kind"] == "prompting":
        runs = len(config["seeds"] or [0]) if config["mode"] == "one_shot" else 1
        flops = runs * test_rows * 2 * n * PROMPT_TOKENS
        return (0.0, flops) if prompts_in_4_bits(config, card) else (flops, 0.0)
    layers = cached_shape(known_config(config["model"])).layers
    train = config["train"]
    validation = data["validation_size"]
    train_rows = _rows(data["train_limit"], MNLI_TRAIN - validation)
    tokens = QLORA_TOKENS if config["kind"] == "qlora" else ENCODER_TOKENS
    if config.get("method") == "ptuning":
        tokens += config["ptuning"]["num_virtual_tokens"]
    runs = len((config.get("sweep") or {}).get("values") or config.get("seeds") or [0])
    per_run = (train_rows * train["epochs"] * train_factor(config, layers) * n * tokens
               + (validation * train["epochs"] + test_rows) * 2 * n * tokens)  # per-epoch validation, test
    flops = runs * per_run
    return (0.0, flops) if config["kind"] == "qlora" else (flops, 0.0)


def seconds(config: dict, card: Card, utilization: float, utilization_4bit: float) -> float:
    sixteen, four = work(config, card)
    peak = card.peak_tflops * 1e12
    return sixteen / (peak * utilization) + four / (peak * utilization_4bit)


def table(profile: str, cards=("T4", "H100"), utilization: float = UTILIZATION,
          utilization_4bit: float = UTILIZATION_4BIT) -> str:
    from nlilab.params import load_profile

    prof = load_profile(profile)
    lines = ["| experiment | " + " | ".join(f"{CARDS[c].name} (min)" for c in cards) + " |",
             "|---|" + "---:|" * len(cards)]
    totals = dict.fromkeys(cards, 0.0)
    for name, config in prof.experiments.items():
        cells = []
        for c in cards:
            value = seconds(config, CARDS[c], utilization, utilization_4bit) / 60
            totals[c] += value
            cells.append(f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[c]:.0f}**" for c in cards) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--cards", nargs="+", default=["T4", "H100"], choices=sorted(CARDS))
    parser.add_argument("--utilization", type=float, default=UTILIZATION,
                        help="share of the peak for 16-bit work (ASSUMED 0.2 until gpu_check measures it)")
    parser.add_argument("--utilization-4bit", type=float, default=UTILIZATION_4BIT)
    args = parser.parse_args()
    print(table(args.profile, args.cards, args.utilization, args.utilization_4bit))
    print(f"\nESTIMATE, not a measurement: peaks from NVIDIA datasheets, utilization ASSUMED "
          f"{args.utilization:.0%} (16-bit) and {args.utilization_4bit:.0%} (4-bit); downloads not included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
