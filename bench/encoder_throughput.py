"""Encoder training throughput: nlilab's trainer against the `run_glue.py` way of training, side by side.

Same model (the embedded MiniLM), same real MultiNLI training pairs, same batch size, epochs, learning rate,
schedule and seed, in one process. The peer pads every pair to max_seq_length (128) and draws random batches,
as `run_glue.py` does by default; nlilab pads each batch to its own longest pair and groups batches by length.
Also measured: the limit, i.e. forward+backward+step on exactly the real token count (batches of length-sorted
pairs, each padded only to its own longest pair, no Trainer), to show how close nlilab gets.

    NLILAB_MNLI_DIR=/path/to/mnli .venv/bin/python bench/encoder_throughput.py [--train 2000 --epochs 2]

Prints a table and writes bench/out/encoder_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.data.nli import load_nli  # noqa: E402
from nlilab.models.resolve import resolve_model  # noqa: E402
from nlilab.params import validate_block  # noqa: E402
from nlilab.training.trainer import build_trainer, tokenize_splits  # noqa: E402


def config_for(args, precision: str) -> dict:
    """A complete encoder config built through the real schema, so defaults match a profile's."""
    raw = {"model": "minilm", "device": "cpu", "precision": precision, "seed": args.seed,
           "data": {"source": "local", "train_limit": args.train, "eval_limit": args.eval},
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "max_length": 128, "logging_steps": 50}}
    config = validate_block("encoder", raw, "bench")
    config.update(name="bench", kind="encoder", notebook="10_full_finetune")
    return config


def fresh_model(path: str, seed: int):
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)


def accuracy(trainer, dataset, labels) -> float:
    out = trainer.predict(dataset)
    return float((np.argmax(out.predictions, axis=-1) == np.asarray(labels)).mean())


def timed_fit(trainer, args, data, eval_set) -> dict:
    """Train (timed alone: no evaluation inside the timed region), then score dev-matched."""
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    acc = accuracy(trainer, eval_set, data["validation_matched"]["label"])
    return {"wall_s": wall, "samples_per_s": len(data["train"]) * args.epochs / wall, "accuracy_matched": acc}


def run_ours(args, data, path, tokenizer, precision: str) -> dict:
    config = config_for(args, precision)
    tokenized = tokenize_splits(data, tokenizer, 128)
    model = fresh_model(path, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(model, tokenizer, tokenized, config, args.seed, Path(tmp), evaluate=False)
        return timed_fit(trainer, args, data, tokenized["validation_matched"])


def run_peer(args, data, path, tokenizer) -> dict:
    """The run_glue.py recipe: pad to max_seq_length, default collator, random sampler."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    def encode(batch):
        return tokenizer(batch["premise"], batch["hypothesis"], padding="max_length", max_length=128,
                         truncation=True)

    splits = {s: data[s].map(encode, batched=True).rename_column("label", "labels")
              .select_columns(["input_ids", "token_type_ids", "attention_mask", "labels"])
              for s in ("train", "validation_matched")}
    model = fresh_model(path, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                                  per_device_eval_batch_size=64, learning_rate=args.lr, weight_decay=0.01,
                                  warmup_steps=0.06, seed=args.seed, data_seed=args.seed, report_to="none",
                                  use_cpu=True, save_strategy="no", eval_strategy="no", logging_steps=50)
        trainer = Trainer(model=model, args=targs, train_dataset=splits["train"], data_collator=default_data_collator)
        return timed_fit(trainer, args, data, splits["validation_matched"])


def run_limit(args, data, path, tokenizer) -> dict:
    """Forward+backward+step over length-sorted batches padded only to their own longest pair."""
    train = data["train"]
    # datasets 5 returns lazy columns; the tokenizer wants plain lists
    enc = tokenizer(list(train["premise"]), list(train["hypothesis"]), truncation=True, max_length=128)
    order = np.argsort([len(ids) for ids in enc["input_ids"]])
    real_tokens = int(sum(len(ids) for ids in enc["input_ids"]))
    model = fresh_model(path, args.seed)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr)
    labels = torch.tensor(list(train["label"]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    started = time.perf_counter()
    for _ in range(args.epochs):
        for idx in batches:
            feats = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
            loss = model(**feats, labels=labels[idx]).loss
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "samples_per_s": len(order) * args.epochs / wall, "real_tokens_per_epoch": real_tokens,
            "padded_tokens_per_epoch_peer": len(order) * 128}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="also time nlilab with bf16 autocast on the CPU")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "encoder_throughput.json"))
    args = parser.parse_args(argv)
    if not os.environ.get("NLILAB_MNLI_DIR"):
        parser.error("set NLILAB_MNLI_DIR to a local MultiNLI folder (train.jsonl, validation_matched.jsonl, ...)")
    from transformers import AutoTokenizer

    data = load_nli({"source": "local", "local_dir": None, "hub_id": "", "train_limit": args.train,
                     "eval_limit": args.eval}, seed=args.seed)
    path = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    results = {"settings": vars(args), "torch_threads": torch.get_num_threads(),
               "peer_run_glue": run_peer(args, data, path, tokenizer),
               "nlilab_fp32": run_ours(args, data, path, tokenizer, "fp32")}
    if args.bf16:
        results["nlilab_bf16"] = run_ours(args, data, path, tokenizer, "bf16")
    results["limit_fp32"] = run_limit(args, data, path, tokenizer)
    peer = results["peer_run_glue"]["samples_per_s"]
    print(f"\n{'run':<16}{'samples/s':>11}{'wall s':>9}{'acc matched':>13}{'x peer':>8}")
    for name, r in results.items():
        if isinstance(r, dict) and "samples_per_s" in r:
            acc = f"{100 * r['accuracy_matched']:.1f}" if "accuracy_matched" in r else "-"
            print(f"{name:<16}{r['samples_per_s']:>11.2f}{r['wall_s']:>9.1f}{acc:>13}{r['samples_per_s'] / peer:>8.2f}")
    ours = results["nlilab_fp32"]["samples_per_s"]
    print(f"nlilab fp32 / peer: {ours / peer:.2f}x; nlilab fp32 / limit: {ours / results['limit_fp32']['samples_per_s']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
