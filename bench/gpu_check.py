"""GPU check: the CUDA code paths (bf16 autocast training, bitsandbytes 4-bit NF4 QLoRA, prompt scoring on the
GPU) run through nlilab's real entry points, with tiny randomly initialised models built from a config.

The `paper` profile's big models cannot be downloaded here, so this checks the *paths* the paper profile takes,
not its numbers. Usage (on a machine with a GPU; tokenizer folders made by `--export-tokenizers` beforehand):

    python bench/gpu_check.py --export-tokenizers DIR    # on the CPU machine: saves the two tokenizers
    python bench/gpu_check.py --tokenizers DIR --out results.json

Prints one line per check and exits non-zero if any failed.
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


def run_checks(tokenizers: Path, out: Path | None, dry_run: bool = False) -> int:
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
    settings = {"device": "cpu", "precision": "fp32"} if dry_run else {"device": "cuda", "precision": "bf16"}
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
    if out:
        out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-tokenizers", type=Path, help="save the stand-in models' tokenizers here and exit")
    parser.add_argument("--tokenizers", type=Path, help="folder written by --export-tokenizers")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--cpu-dry-run", action="store_true", help="same checks on the CPU in fp32 (script test)")
    args = parser.parse_args()
    if args.export_tokenizers:
        export_tokenizers(args.export_tokenizers)
        return 0
    if not args.tokenizers:
        parser.error("--tokenizers is required (make it with --export-tokenizers)")
    return run_checks(args.tokenizers, args.out, args.cpu_dry_run)


if __name__ == "__main__":
    sys.exit(main())
