"""GPU check: the CUDA code paths (bf16 autocast training, bitsandbytes 4-bit NF4 QLoRA, prompt scoring on the
GPU) run through nlilab's real entry points, with tiny randomly initialised models built from a config.

The `paper` profile's big models cannot be downloaded here, so this checks the *paths* the paper profile takes,
not its numbers. Usage (on a machine with a GPU; tokenizer folders made by `--export-tokenizers` beforehand):

    python bench/gpu_check.py --export-tokenizers DIR    # on the CPU machine: saves the two tokenizers
    python bench/gpu_check.py --tokenizers DIR --out results.json [--precision fp16] [--throughput]

Prints one line per check and exits non-zero if any failed. Also:
- the `gpu` profile's settings: `--precision fp16` runs the checks on the T4 path (fp16 with loss scaling;
  `auto` takes what the card has), and the memory preflight of params/gpu.yaml is printed against this card;
- `--throughput`: training samples/s of models built from the real architectures' configs with random weights
  (roberta-large's shape; Llama-3-8B's shape with THROUGHPUT_LLAMA_LAYERS layers, its time per sample scaled to
  32 layers, stated as such), nlilab's Trainer against the run_glue way (pad to 128, random batches), per
  precision, and the share of the card's datasheet peak they reach. Rows: $NLILAB_MNLI_DIR if set, else the
  bundled set (its pairs are shorter than MultiNLI's; the output says which).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_tokenizers(target: Path) -> None:
    from transformers import AutoTokenizer

    from nlilab.models.resolve import resolve_model

    for alias in ("minilm", "smollm2"):
        AutoTokenizer.from_pretrained(resolve_model(alias).path).save_pretrained(target / alias)
    print(f"tokenizers saved under {target}")


def tiny_models(tokenizers: Path, folder: Path) -> dict[str, str]:
    """A 2-layer BERT and a 2-layer Llama, random weights, with the real tokenizers of the stand-in models."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    bert_tok = AutoTokenizer.from_pretrained(tokenizers / "minilm")
    bert = BertForSequenceClassification(BertConfig(vocab_size=bert_tok.vocab_size, hidden_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=128, num_labels=3))
    llama_tok = AutoTokenizer.from_pretrained(tokenizers / "smollm2")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tok), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                         tie_word_embeddings=True, bos_token_id=llama_tok.bos_token_id,
                                         eos_token_id=llama_tok.eos_token_id))
    paths = {}
    for name, model, tok in (("bert", bert, bert_tok), ("llama", llama, llama_tok)):
        paths[name] = str(folder / name)
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


PROFILE = """
shared:
  seed: 0
  device: {device}
  precision: {precision}
  data: {{source: bundled, train_limit: 96, eval_limit: 32}}
experiments:
  full_finetune:
    notebook: 10_full_finetune
    model: {bert}
    train: {{epochs: 1, batch_size: 16, max_length: 64}}
  lora:
    notebook: 12_lora
    model: {bert}
    method: lora
    train: {{epochs: 1, batch_size: 16, max_length: 64, learning_rate: 5.0e-4}}
  deep_prompts:
    notebook: 15_deep_prompts
    model: {bert}
    method: prefix
    train: {{epochs: 1, batch_size: 16, max_length: 64, learning_rate: 5.0e-3}}
  zero_shot:
    notebook: 20_prompting
    model: {llama}
    mode: zero_shot
    batch_size: 8
  qlora:
    notebook: 21_qlora
    model: {llama}
    quantization: nf4
    fallback: false
    compute_dtype: {precision}
    lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
    train: {{max_steps: 4, batch_size: 8, eval_batch_size: 16, learning_rate: 2.0e-4, max_length: 64}}
  qlora_embeddings_4bit:
    notebook: 21_qlora
    model: {llama}
    quantization: nf4
    quantize_embeddings: true
    fallback: false
    compute_dtype: {precision}
    lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
    train: {{max_steps: 4, batch_size: 8, eval_batch_size: 16, learning_rate: 2.0e-4, max_length: 64}}
"""


def run_checks(tokenizers: Path, out: Path | None, dry_run: bool = False, precision: str = "bf16") -> int:
    import torch

    from nlilab.experiments import encoder, prompting, qlora
    from nlilab.params import load_profile, with_output_dirs

    report = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "checks": {}}
    work = Path(tempfile.mkdtemp(prefix="nlilab-gpu-"))
    paths = tiny_models(tokenizers, work / "models")
    (work / "params").mkdir()
    profile_file = work / "params" / "gpu.yaml"
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    settings = {"device": "cpu", "precision": "fp32"} if dry_run else {"device": "cuda", "precision": precision}
    profile_file.write_text(PROFILE.format(**paths, **settings).replace("shared:\n", f"shared:\n  notebooks_dir: {notebooks}\n", 1))
    prof = load_profile(profile_file)
    entry = {"encoder": encoder.run, "prompting": prompting.run, "qlora": qlora.run}
    failed = 0
    for name in prof.experiments:
        config = with_output_dirs(prof, name, results_dir=work / "results")
        started = time.perf_counter()
        try:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            metrics = entry[config["kind"]](config)
            keep = ("quantization", "quantization_note", "compute_dtype", "gpu_peak_mb", "trainable_params",
                    "train_samples_per_second", "examples_per_second", "weight_footprint_mb", "method_label")
            result = {"ok": True, "seconds": time.perf_counter() - started,
                      "accuracy_matched": metrics["validation_matched"]["accuracy"],
                      **{k: metrics.get(k) for k in keep if metrics.get(k) is not None}}
        except Exception as exc:  # noqa: BLE001 - report every check, not just the first failure
            failed += 1
            result = {"ok": False, "error": "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                      "traceback": traceback.format_exc()[-3000:]}
        report["checks"][name] = result
        print(f"{name:<14} {'ok' if result['ok'] else 'FAILED'}  "
              f"{json.dumps({k: v for k, v in result.items() if k not in ('ok', 'traceback')})}", flush=True)
    report["memory_preflight"] = memory_preflight()
    if out:
        out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ the gpu profile's memory
def memory_preflight(card: int | None = None) -> dict:
    """params/gpu.yaml's memory preflight against this card (a 16 GiB stand-in on a machine without one)."""
    from nlilab.models.memory import GiB, gpu_memory_bytes, plan_experiment
    from nlilab.params import load_profile
    from nlilab.training.precision import resolve_precision

    card = card or gpu_memory_bytes() or 16 * GiB
    precision, _ = resolve_precision("auto", "cuda") if gpu_memory_bytes() else ("fp16", "stand-in")
    out = {"card_gib": round(card / GiB, 1), "precision": precision, "experiments": {}}
    for name, config in load_profile("gpu").experiments.items():
        plan = plan_experiment({**config, "precision": precision}, card)
        out["experiments"][name] = {"estimate": plan.estimate.describe() if plan.estimate else None,
                                    "weights": plan.weights, "note": plan.note, "problem": plan.problem}
        print(f"memory {name:<20} {out['experiments'][name]['estimate']}  {plan.problem or plan.note or 'fits'}")
    return out


# ---------------------------------------------------------------------------------------------- throughput
THROUGHPUT_LLAMA_LAYERS = 4  # of Llama-3-8B's 32: the rest of its shape is the real one


def _rows(tokenizer, limit: int) -> tuple[dict, str]:
    """Tokenized training pairs (no padding) and where they came from."""
    import os

    from nlilab.data.nli import load_nli

    source = "local" if os.environ.get("NLILAB_MNLI_DIR") else "bundled"
    data = load_nli({"source": source, "local_dir": None, "hub_id": "", "train_limit": limit,
                     "eval_limit": 8, "validation_size": 8}, seed=0)
    enc = tokenizer(list(data["train"]["premise"]), list(data["train"]["hypothesis"]), truncation=True,
                    max_length=128)
    return {"input_ids": enc["input_ids"], "labels": list(data["train"]["label"])}, (
        "MultiNLI ($NLILAB_MNLI_DIR)" if source == "local" else "the bundled set (shorter pairs than MultiNLI)")


def _dataset(rows: dict, pad_to: int | None):
    from datasets import Dataset

    ids = rows["input_ids"]
    if pad_to:  # the run_glue way: every row padded to max_seq_length
        return Dataset.from_dict({"input_ids": [r + [0] * (pad_to - len(r)) for r in ids],
                                  "attention_mask": [[1] * len(r) + [0] * (pad_to - len(r)) for r in ids],
                                  "labels": rows["labels"]})
    return Dataset.from_dict({"input_ids": ids, "labels": rows["labels"]})


def _encoder_run(model_dir: Path, tokenizer, rows: dict, precision: str, steps: int, way: str) -> float:
    """samples/s of `steps` optimizer steps of batches of 32: nlilab's Trainer, or the run_glue way."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from nlilab.params import validate_block
    from nlilab.training.trainer import build_trainer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    with tempfile.TemporaryDirectory() as tmp:
        if way == "nlilab":
            config = validate_block("encoder", {"model": str(model_dir), "device": "cuda", "precision": precision,
                                                "train": {"max_steps": steps, "batch_size": 32, "max_length": 128,
                                                          "logging_steps": steps, "window_steps": 0}}, "bench")
            config.update(name="throughput", kind="encoder", notebook="10_full_finetune")
            trainer = build_trainer(model, tokenizer, {"train": _dataset(rows, None)}, config, 0, Path(tmp),
                                    evaluate=False)
        else:
            args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=32,
                                     learning_rate=2e-5, bf16=precision == "bf16", fp16=precision == "fp16",
                                     report_to="none", save_strategy="no", eval_strategy="no", seed=0)
            trainer = Trainer(model=model, args=args, train_dataset=_dataset(rows, 128),
                              data_collator=default_data_collator)
        torch.cuda.synchronize()
        started = time.perf_counter()
        trainer.train()
        torch.cuda.synchronize()
        return steps * 32 / (time.perf_counter() - started)


def _llama_run(rows: dict, precision: str, steps: int) -> float:
    """samples/s of a frozen 16-bit Llama-3-8B-shaped classifier with THROUGHPUT_LLAMA_LAYERS layers, forward and
    backward to its inputs (what LoRA and QLoRA's frozen base costs), length-grouped batches of 8."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from nlilab.models.architectures import LLAMA3_8B

    fields = {k: v for k, v in LLAMA3_8B.items() if k != "model_type"}
    config = LlamaConfig(**{**fields, "num_hidden_layers": THROUGHPUT_LLAMA_LAYERS}, num_labels=3, pad_token_id=0)
    dtype = torch.float32 if precision == "fp32" else getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])
    model = LlamaForSequenceClassification(config).to("cuda", dtype)
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    model.enable_input_require_grads()
    order = sorted(range(len(rows["input_ids"])), key=lambda i: len(rows["input_ids"][i]))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        width = max(len(rows["input_ids"][i]) for i in batch)
        ids = torch.tensor([rows["input_ids"][i] + [0] * (width - len(rows["input_ids"][i])) for i in batch],
                           device="cuda")
        labels = torch.tensor([rows["labels"][i] for i in batch], device="cuda")
        model(input_ids=ids, labels=labels).loss.backward()
    torch.cuda.synchronize()
    return steps * 8 / (time.perf_counter() - started)


def throughput(tokenizers: Path, steps: int = 60) -> dict:
    """Training samples/s per precision and way, with the share of the datasheet peak they reach."""
    import torch
    from transformers import (
        AutoTokenizer,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from bench.gpu_estimate import CARDS, ENCODER_TOKENS, body_params
    from nlilab.models.architectures import ROBERTA_LARGE

    name = torch.cuda.get_device_name(0)
    card = next((c for key, c in CARDS.items() if key in name), None)
    precisions = ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizers / "minilm")  # ids < 30,522 fit roberta's vocabulary
    rows, source = _rows(tokenizer, 32 * steps)
    tokens = sum(len(r) for r in rows["input_ids"]) / len(rows["input_ids"])
    folder = Path(tempfile.mkdtemp(prefix="nlilab-roberta-large-"))
    fields = {k: v for k, v in ROBERTA_LARGE.items() if k != "model_type"}
    RobertaForSequenceClassification(RobertaConfig(**fields, num_labels=3)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = {"device": name, "peak_tflops": card and card.peak_tflops, "rows": source, "tokens_per_pair": tokens,
           "note_tokens": f"the MultiNLI estimate assumes {ENCODER_TOKENS:.1f} (bench/gpu_estimate.py)", "runs": {}}

    def share(samples_per_s: float, flops_per_token: float) -> float | None:
        return card and samples_per_s * tokens * flops_per_token / (card.peak_tflops * 1e12)

    roberta = body_params("FacebookAI/roberta-large")
    llama = body_params("meta-llama/Meta-Llama-3-8B-Instruct")
    for precision in precisions:
        for way in ("run_glue", "nlilab"):
            rate = _encoder_run(folder, tokenizer, rows, precision, steps, way)
            out["runs"][f"roberta-large {way} {precision}"] = {"samples_per_s": rate,
                                                              "peak_share": share(rate, 6 * roberta)}
        out["runs"][f"roberta-large nlilab/run_glue {precision}"] = {"ratio": (
            out["runs"][f"roberta-large nlilab {precision}"]["samples_per_s"]
            / out["runs"][f"roberta-large run_glue {precision}"]["samples_per_s"])}
        if precision != "fp32":  # an 8B body in fp32 does not fit a 16 GB card; its 16-bit run is the one used
            rate = _llama_run(rows, precision, steps) * THROUGHPUT_LLAMA_LAYERS / 32
            out["runs"][f"llama-3-8b frozen base {precision} (scaled from {THROUGHPUT_LLAMA_LAYERS} layers)"] = {
                "samples_per_s": rate, "peak_share": share(rate, 4 * llama)}
    for key, value in out["runs"].items():
        print(f"throughput {key:<58} {json.dumps(value)}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-tokenizers", type=Path, help="save the stand-in models' tokenizers here and exit")
    parser.add_argument("--tokenizers", type=Path, help="folder written by --export-tokenizers")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--cpu-dry-run", action="store_true", help="same checks on the CPU in fp32 (script test)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "auto"),
                        help="the checks' precision: fp16 is the gpu profile's T4 path, auto what the card has")
    parser.add_argument("--throughput", action="store_true", help="also the training throughput benchmark")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per throughput run")
    args = parser.parse_args()
    if args.export_tokenizers:
        export_tokenizers(args.export_tokenizers)
        return 0
    if not args.tokenizers:
        parser.error("--tokenizers is required (make it with --export-tokenizers)")
    status = run_checks(args.tokenizers, args.out, args.cpu_dry_run, args.precision)
    if args.throughput and not args.cpu_dry_run:
        figures = throughput(args.tokenizers, args.steps)
        if args.out:
            report = json.loads(args.out.read_text())
            args.out.write_text(json.dumps({**report, "throughput": figures}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
