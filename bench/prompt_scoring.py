"""Prompt-scoring throughput: nlilab's log-likelihood scorer against lm-evaluation-harness, side by side.

Same model (the embedded SmolLM2, fp32, CPU), same real MultiNLI dev-matched rows, the harness's MNLI template in
both, and the very same requests: nlilab renders each context, and the harness's `HFLM.loglikelihood` scores that
context with each of the three continuations (" True", " Neither", " False"). Reported: examples per second of
each, the ratio, the share of identical predictions, and both accuracies.

    pip install lm_eval==0.4.13          # the peer (`make bench-env` does it)
    NLILAB_MNLI_DIR=/path/to/mnli .venv/bin/python bench/prompt_scoring.py [--rows 500]

Writes bench/out/prompt_scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.data.nli import load_nli  # noqa: E402
from nlilab.models.resolve import resolve_model  # noqa: E402
from nlilab.prompting.prompts import build_context, load_prompt  # noqa: E402
from nlilab.prompting.scoring import LoglikScorer, encode_requests  # noqa: E402


def contexts_for(prompt, ds) -> list[str]:
    return [build_context(prompt, p, h) for p, h in zip(ds["premise"], ds["hypothesis"])]


def run_ours(path: str, prompt, contexts: list[str], batch_size: int, int8: bool = False) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if int8:  # what would close the gap: int8 weights with dynamic activation scales (not the same model any more)
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    scorer = LoglikScorer(model, batch_size)
    started = time.perf_counter()  # tokenization is inside the timed region, as it is for the peer
    requests = encode_requests(tokenizer, contexts, prompt.label_words, prompt.add_special_tokens)
    scores = scorer.score(requests, desc="nlilab")
    wall = time.perf_counter() - started
    return {"wall_s": wall, "examples_per_s": len(contexts) / wall, "scores": scores, "stats": dict(scorer.stats)}


def run_peer(path: str, prompt, contexts: list[str], batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=path, device="cpu", batch_size=batch_size, dtype="float32")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, word), idx=j)
                 for ctx in contexts for j, word in enumerate(prompt.label_words)]
    started = time.perf_counter()
    out = lm.loglikelihood(instances, disable_tqdm=False)
    wall = time.perf_counter() - started
    scores = np.array([logprob for logprob, _ in out], dtype=float).reshape(len(contexts), len(prompt.label_words))
    return {"wall_s": wall, "examples_per_s": len(contexts) / wall, "scores": scores}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-int8", action="store_true",
                        help="also score with nlilab on int8 dynamically quantized linear layers (a probe: how fast, "
                             "and how many predictions change)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "prompt_scoring.json"))
    args = parser.parse_args(argv)
    if not os.environ.get("NLILAB_MNLI_DIR"):
        parser.error("set NLILAB_MNLI_DIR to a local MultiNLI folder (train.jsonl, validation_matched.jsonl, ...)")
    data = load_nli({"source": "local", "local_dir": None, "hub_id": "", "train_limit": None,
                     "eval_limit": args.rows}, seed=args.seed)
    ds = data["validation_matched"]
    labels = np.asarray(ds["label"])
    prompt = load_prompt("harness_mnli")
    path = resolve_model("smollm2").path
    contexts = contexts_for(prompt, ds)
    peer = run_peer(path, prompt, contexts, args.batch_size)
    ours = run_ours(path, prompt, contexts, args.batch_size)
    pred_ours, pred_peer = ours["scores"].argmax(1), peer["scores"].argmax(1)
    result = {
        "settings": vars(args), "rows": len(contexts), "prompt": prompt.record(),
        "nlilab": {"examples_per_s": ours["examples_per_s"], "wall_s": ours["wall_s"],
                   "accuracy": float((pred_ours == labels).mean()), "scorer_stats": ours["stats"]},
        "lm_eval": {"examples_per_s": peer["examples_per_s"], "wall_s": peer["wall_s"],
                    "accuracy": float((pred_peer == labels).mean())},
        "ratio": ours["examples_per_s"] / peer["examples_per_s"],
        "identical_predictions": float((pred_ours == pred_peer).mean()),
        "max_abs_logprob_diff": float(np.abs(ours["scores"] - peer["scores"]).max()),
    }
    if args.also_int8:
        probe = run_ours(path, prompt, contexts, args.batch_size, int8=True)
        pred_probe = probe["scores"].argmax(1)
        result["nlilab_int8_probe"] = {
            "examples_per_s": probe["examples_per_s"], "wall_s": probe["wall_s"],
            "accuracy": float((pred_probe == labels).mean()),
            "ratio_to_lm_eval": probe["examples_per_s"] / peer["examples_per_s"],
            "identical_to_lm_eval": float((pred_probe == pred_peer).mean())}
    print(f"\nrows {len(contexts)}  template {prompt.name} v{prompt.version}")
    for name in ("lm_eval", "nlilab"):
        r = result[name]
        print(f"{name:<8} {r['examples_per_s']:8.2f} examples/s   {r['wall_s']:7.1f} s   accuracy {100 * r['accuracy']:.1f}%")
    print(f"ratio {result['ratio']:.2f}x   identical predictions {100 * result['identical_predictions']:.2f}%   "
          f"max |logprob diff| {result['max_abs_logprob_diff']:.2e}")
    if args.also_int8:
        r = result["nlilab_int8_probe"]
        print(f"int8 probe {r['examples_per_s']:6.2f} examples/s   {r['wall_s']:7.1f} s   accuracy {100 * r['accuracy']:.1f}%"
              f"   ratio {r['ratio_to_lm_eval']:.2f}x   identical to lm_eval {100 * r['identical_to_lm_eval']:.2f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
