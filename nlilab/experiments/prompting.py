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
Before Use") divides out the label bias measured on content-free inputs such as "N/A"."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nlilab import EVAL_SPLITS, LABELS
from nlilab.prompting.demos import DemoPlan, choose_demos
from nlilab.prompting.generation import (
    generate_answers,
    parse_answer,
    score_with_unmatched,
)
from nlilab.prompting.prompts import Prompt, build_context, load_prompt, prompt_record
from nlilab.prompting.scoring import (
    LoglikScorer,
    Request,
    calibrate,
    content_free_bias,
    encode_requests,
)
from nlilab.training.costs import SeedMeter, cost_summary, scoring_window

RUN_FILE = "run.json"


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
        """Examples per second on one core with nothing else of nlilab running (nlilab.training.costs.scoring_window), on
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
    from nlilab.results import atomic_write_json, peak_memory_mb, read_json

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
    from nlilab.evaluation.metrics import aggregate_split
    from nlilab.training.trainer import baselines, flag_collapse

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
    from nlilab.data.nli import load_nli
    from nlilab.models.resolve import resolve_model
    from nlilab.results import count_parameters, experiment_dir, write_metrics
    from nlilab.training.trainer import resolve_device

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
