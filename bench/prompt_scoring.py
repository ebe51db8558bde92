"""Prompt-scoring throughput: nlilab's log-likelihood scorer against lm-evaluation-harness, side by side.

Same model (the embedded SmolLM2, fp32, CPU), same real MultiNLI dev-matched rows, the harness's MNLI template in
both, and the very same requests: nlilab renders each context, and the harness way scores that context with each
of the three continuations (" True", " Neither", " False"). Reported: examples per second of each (and CPU
seconds), the ratio, the share of identical predictions, the largest log-likelihood difference, both accuracies.
Each side is warmed up on one batch first, untimed; `--repeat N` measures both N times, alternating.

Zero-shot (`--shots 0`, the default) compares with lm-evaluation-harness itself (`HFLM.loglikelihood`). One-shot
(`--shots 1`) puts the same training demonstration before every row (`choose_demos(..., rotate=False)`, drawn by
`--demo-seed`): nlilab computes it once and reuses its keys and values (the shared-prefix cache), the harness
recomputes it inside every request. Its peer is `harness_way` below, the harness's loglikelihood path rewritten
from how it behaves (so it runs without lm_eval installed); `--peer lm_eval` uses the real one for either, and
`--peer harness_way` the rewrite for either (on zero-shot: a check of the rewrite against the real one's figures).

    pip install lm_eval==0.4.13          # only for --peer lm_eval (`make bench-env` does it)
    NLILAB_MNLI_DIR=/path/to/mnli .venv/bin/python bench/prompt_scoring.py [--rows 500] [--shots 1] [--repeat 2]

Writes bench/out/prompt_scoring.json (bench/out/prompt_scoring_1shot.json with --shots 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.data.nli import BUNDLED_DIR, load_nli  # noqa: E402
from nlilab.models.resolve import resolve_model  # noqa: E402
from nlilab.prompting.demos import choose_demos  # noqa: E402
from nlilab.prompting.prompts import build_context, load_prompt  # noqa: E402
from nlilab.prompting.scoring import LoglikScorer, encode_requests  # noqa: E402
from nlilab.training.costs import LOCK_ENV  # noqa: E402

# ================================================================================================ the rows
def load_rows(rows: int, seed: int):
    """Real MultiNLI from $NLILAB_MNLI_DIR when it is set, else the bundled set."""
    source = "local" if os.environ.get("NLILAB_MNLI_DIR") else "bundled"
    data = load_nli({"source": source, "local_dir": None, "hub_id": "", "train_limit": None, "eval_limit": rows},
                    seed=seed)
    where = os.environ["NLILAB_MNLI_DIR"] if source == "local" else str(BUNDLED_DIR)
    return data, where


def contexts_for(prompt, ds, plan=None) -> list[str]:
    """Each row's context, after its demonstration when there is a plan (`DemoPlan.for_example`)."""
    return [build_context(prompt, p, h, plan.for_example(i) if plan else ())
            for i, (p, h) in enumerate(zip(ds["premise"], ds["hypothesis"]))]


def one_shot_plan(data, demo_seed: int, rotate: bool):
    """The demonstration(s) as the prompting experiment draws them: from train, never a pair that is evaluated."""
    evaluated = {pid for split in ("validation_matched", "validation_mismatched") for pid in data[split]["pairID"]}
    return choose_demos(data["train"], demo_seed, 1, rotate, evaluated)


def load_lm(path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


# ================================================================================================== nlilab
def run_ours(path: str, prompt, contexts: list[str], groups, batch_size: int, int8: bool = False) -> dict:
    import torch

    tokenizer, model = load_lm(path)
    if int8:  # what would close the gap: int8 weights with dynamic activation scales (not the same model any more)
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def score(rows, progress=True):
        scorer = LoglikScorer(model, batch_size, progress=progress)
        requests = encode_requests(tokenizer, [contexts[i] for i in rows], prompt.label_words,
                                   prompt.add_special_tokens, groups=[groups[i] for i in rows])
        return scorer.score(requests, desc="nlilab"), scorer

    score(range(min(batch_size, len(contexts))), progress=False)  # warm-up (untimed): first-call allocations
    started, cpu = time.perf_counter(), time.process_time()  # tokenization is timed, as it is for the peer
    scores, scorer = score(range(len(contexts)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "examples_per_s": len(contexts) / wall, "scores": scores,
            "stats": dict(scorer.stats)}


# ===================================================================================== the harness's way
class HarnessWay:
    """lm-evaluation-harness's `HFLM.loglikelihood` (v0.4, its defaults) for a causal LM, written from how it
    behaves, not from its code:

    - each (context, continuation) request is encoded on its own: trailing whitespace of the context moves to
      the continuation, the continuation's tokens are those of (context + continuation) after the context's
      tokens; no special tokens;
    - with `logits_cache` (the harness's default) requests whose model input is the same, context plus
      continuation less its last token, share one row: with one-token label words, the three labels of an
      example are one row;
    - rows are sorted longest first (ties by their tokens) and cut into batches of `batch_size`; each row is
      (context + continuation)[:-1], left-truncated to the model's length, right-padded with token 0 to the
      batch's longest, with no attention mask (a causal model's real tokens never see later padding);
    - one forward pass per batch, log-softmax over the whole vocabulary at every position, then each request's
      continuation log-probabilities are picked from its row and summed; `is_greedy` as the harness reports it.

    The demonstration is part of every context string, so it is recomputed in every row, as in the harness.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, logits_cache: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.logits_cache = batch_size, logits_cache
        self.max_length = getattr(model.config, "max_position_embeddings", None) or 2048
        self.stats = {"forward_passes": 0, "rows": 0, "real_tokens": 0, "padded_tokens": 0}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        moved = len(context) - len(context.rstrip())
        if moved:
            context, continuation = context[:-moved], context[-moved:] + continuation
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, pairs: list[tuple[str, str]], progress: bool = True) -> list[tuple[float, bool]]:
        import torch
        import torch.nn.functional as F

        from nlilab.progress import bar

        encoded = [self._encode_pair(ctx, cont) for ctx, cont in pairs]
        rows: dict = {}
        for i, (ctx, cont) in enumerate(encoded):
            rows.setdefault(tuple(ctx + cont[:-1]) if self.logits_cache else i, []).append(i)
        order = sorted(rows.values(), key=lambda members: (-len(encoded[members[0]][0] + encoded[members[0]][1]),
                                                           tuple(encoded[members[0]][0] + encoded[members[0]][1])))
        out: list = [None] * len(pairs)
        chunks = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        with torch.no_grad():
            for chunk in bar(chunks, desc="harness way", disable=not progress, leave=False):
                inputs = [(encoded[m[0]][0] + encoded[m[0]][1])[-(self.max_length + 1):][:-1] for m in chunk]
                width = max(len(x) for x in inputs)
                batch = torch.zeros(len(inputs), width, dtype=torch.long)
                for row, tokens in enumerate(inputs):
                    batch[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                logprobs = F.log_softmax(self.model(batch).logits, dim=-1)
                for row, members in enumerate(chunk):
                    end = len(inputs[row])
                    for m in members:  # same input for every member, so the row's log-probs serve each one
                        cont = torch.tensor(encoded[m][1], dtype=torch.long)
                        window = logprobs[row, end - len(cont):end]
                        greedy = bool((window.argmax(dim=-1) == cont).all())
                        out[m] = (float(window.gather(1, cont[:, None]).sum()), greedy)
                real = sum(len(x) for x in inputs)
                self.stats["forward_passes"] += 1
                self.stats["rows"] += len(inputs)
                self.stats["real_tokens"] += real
                self.stats["padded_tokens"] += len(inputs) * width - real
        return out


def run_harness_way(path: str, prompt, contexts: list[str], batch_size: int, logits_cache: bool = True) -> dict:
    tokenizer, model = load_lm(path)

    def score(ctxs, progress=True):
        lm = HarnessWay(model, tokenizer, batch_size, logits_cache)
        out = lm.loglikelihood([(ctx, word) for ctx in ctxs for word in prompt.label_words], progress)
        return np.array([logprob for logprob, _ in out], dtype=float).reshape(len(ctxs), -1), lm

    score(contexts[:batch_size], progress=False)  # warm-up (untimed), as for nlilab
    started, cpu = time.perf_counter(), time.process_time()
    scores, lm = score(contexts)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "examples_per_s": len(contexts) / wall, "scores": scores,
            "stats": dict(lm.stats)}


def run_lm_eval(path: str, prompt, contexts: list[str], batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=path, device="cpu", batch_size=batch_size, dtype="float32")

    def instances(ctxs):
        return [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, word), idx=j)
                for ctx in ctxs for j, word in enumerate(prompt.label_words)]

    lm.loglikelihood(instances(contexts[:batch_size]), disable_tqdm=True)  # warm-up (untimed), as for nlilab
    started, cpu = time.perf_counter(), time.process_time()
    out = lm.loglikelihood(instances(contexts), disable_tqdm=False)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = np.array([logprob for logprob, _ in out], dtype=float).reshape(len(contexts), len(prompt.label_words))
    return {"wall_s": wall, "cpu_s": cpu, "examples_per_s": len(contexts) / wall, "scores": scores}


# ==================================================================================================== main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16, help="both sides (the harness's batch_size)")
    parser.add_argument("--seed", type=int, default=0, help="which dev-matched rows")
    parser.add_argument("--shots", type=int, choices=(0, 1), default=0)
    parser.add_argument("--demo-seed", type=int, default=0, help="--shots 1: which training pair is shown")
    parser.add_argument("--rotate-demo-labels", action="store_true",
                        help="--shots 1: one demonstration per label, rotating over the rows (the profiles' "
                             "rotate_demo_labels: true); nlilab then caches three prefixes")
    parser.add_argument("--peer", choices=("lm_eval", "harness_way"), default=None,
                        help="default: lm_eval for --shots 0, harness_way for --shots 1")
    parser.add_argument("--no-logits-cache", action="store_true",
                        help="harness_way: one row per (context, continuation) request, as the harness does "
                             "with logits_cache=False")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure both sides this many times, alternating (each pair is one ratio)")
    parser.add_argument("--also-int8", action="store_true",
                        help="also score with nlilab on int8 dynamically quantized linear layers (a probe: how fast, "
                             "and how many predictions change)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    peer_name = args.peer or ("lm_eval" if args.shots == 0 else "harness_way")
    if peer_name == "lm_eval" and importlib.util.find_spec("lm_eval") is None:
        parser.error("lm_eval is not installed: `make bench-env` installs it, or pass --peer harness_way")
    out_path = Path(args.out or Path(__file__).parent / "out" / (
        "prompt_scoring.json" if args.shots == 0 else "prompt_scoring_1shot.json"))
    # nlilab's scorer pauses between batches while another nlilab process times itself (training.costs); the
    # peer does not, so the bench takes a lock folder of its own: both sides then see the same machine.
    os.environ[LOCK_ENV] = tempfile.mkdtemp(prefix="nlilab-bench-locks-")

    data, where = load_rows(args.rows, args.seed)
    ds = data["validation_matched"]
    labels = np.asarray(ds["label"])
    prompt = load_prompt("harness_mnli")
    path = resolve_model("smollm2").path
    plan = one_shot_plan(data, args.demo_seed, args.rotate_demo_labels) if args.shots else None
    contexts = contexts_for(prompt, ds, plan)
    groups = [plan.group(i) if plan else 0 for i in range(len(ds))]

    def peer_run():
        if peer_name == "lm_eval":
            return run_lm_eval(path, prompt, contexts, args.batch_size)
        return run_harness_way(path, prompt, contexts, args.batch_size, not args.no_logits_cache)

    runs = []
    for _ in range(args.repeat):
        peer = peer_run()
        ours = run_ours(path, prompt, contexts, groups, args.batch_size)
        pred_ours, pred_peer = ours["scores"].argmax(1), peer["scores"].argmax(1)
        runs.append({
            "nlilab": {"examples_per_s": ours["examples_per_s"], "wall_s": ours["wall_s"], "cpu_s": ours["cpu_s"],
                       "accuracy": float((pred_ours == labels).mean()), "scorer_stats": ours["stats"]},
            "peer": {"examples_per_s": peer["examples_per_s"], "wall_s": peer["wall_s"], "cpu_s": peer["cpu_s"],
                     "accuracy": float((pred_peer == labels).mean()), "stats": peer.get("stats")},
            "ratio": ours["examples_per_s"] / peer["examples_per_s"],
            # Per CPU second (one thread: the time the process ran), what other load on the machine moves least.
            "cpu_ratio": peer["cpu_s"] / ours["cpu_s"],
            "identical_predictions": float((pred_ours == pred_peer).mean()),
            "max_abs_logprob_diff": float(np.abs(ours["scores"] - peer["scores"]).max()),
        })
    result = {"settings": {**vars(args), "peer": peer_name}, "data": where, "rows": len(contexts),
              "prompt": prompt.record(), "demonstrations": plan.record() if plan else [],
              "runs": runs, **runs[-1]}
    if args.also_int8:
        probe = run_ours(path, prompt, contexts, groups, args.batch_size, int8=True)
        pred_probe = probe["scores"].argmax(1)
        result["nlilab_int8_probe"] = {
            "examples_per_s": probe["examples_per_s"], "wall_s": probe["wall_s"],
            "accuracy": float((pred_probe == labels).mean()), "cpu_s": probe["cpu_s"],
            "ratio_to_peer": probe["examples_per_s"] / runs[-1]["peer"]["examples_per_s"],
            "identical_to_peer": float((pred_probe == pred_peer).mean())}

    shots = "zero-shot" if plan is None else (
        f"one-shot (demo seed {args.demo_seed}{', rotating labels' if args.rotate_demo_labels else ''})")
    print(f"\nrows {len(contexts)} ({where})  template {prompt.name} v{prompt.version}  {shots}  "
          f"peer {peer_name}{' without logits cache' if args.no_logits_cache else ''}")
    for k, run in enumerate(runs, 1):
        for name in ("peer", "nlilab"):
            r = run[name]
            print(f"run {k}  {name:<7} {r['examples_per_s']:8.2f} examples/s   {r['wall_s']:7.1f} s   "
                  f"cpu {r['cpu_s']:7.1f} s   accuracy {100 * r['accuracy']:.1f}%")
        print(f"run {k}  ratio {run['ratio']:.2f}x (per cpu second {run['cpu_ratio']:.2f}x)   identical predictions "
              f"{100 * run['identical_predictions']:.2f}%   max |logprob diff| {run['max_abs_logprob_diff']:.2e}")
    if args.also_int8:
        r = result["nlilab_int8_probe"]
        print(f"int8 probe {r['examples_per_s']:6.2f} examples/s   {r['wall_s']:7.1f} s   accuracy {100 * r['accuracy']:.1f}%"
              f"   ratio {r['ratio_to_peer']:.2f}x   identical to the peer {100 * r['identical_to_peer']:.2f}%")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
