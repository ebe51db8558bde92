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
from nlilab.data.nli import load_nli
from nlilab.experiments.skeleton import Experiment
from nlilab.models.resolve import resolve_model
from nlilab.params import experiment_seeds
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
from nlilab.prompting.weights import load_kwargs
from nlilab.results import count_parameters, peak_memory_mb
from nlilab.training.costs import SeedMeter, scoring_window
from nlilab.training.trainer import resolve_device


# ============================================================================================= experiment
def load_model(path: str, config: dict, device: str):
    """Tokenizer and causal LM in the profile's precision (or a 4-bit copy, nlilab.prompting.weights), in eval
    mode, on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = load_kwargs(config, path, device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:  # a 4-bit model is placed on its GPU as it loads
        model = model.to(device)
    return tokenizer, model.eval()


def experiment_prompt(config: dict) -> Prompt:
    overrides = {k: v for k, v in config["prompt"].items() if k != "name"}
    return load_prompt(config["prompt"]["name"], overrides)


def prompting_seeds(config: dict) -> list[int]:
    """One-shot: one run per seed (each draws its own demonstrations). Zero-shot is deterministic: one run."""
    return [config["seed"]] if config["mode"] == "zero_shot" else experiment_seeds(config)


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


class Prompting(Experiment):
    activity = "eval"  # the seeds' times cover scoring: nothing trains

    def prepare(self) -> None:
        config = self.config
        # Cheapest refusals first: GPU-only settings without a GPU, a model that cannot be had, a broken prompt.
        self.device = resolve_device(config)
        self.resolved = resolve_model(config["model"], config.get("revision"))
        self.prompt = experiment_prompt(config)
        self.data = load_nli(config["data"], seed=config["seed"])
        tokenizer, model = load_model(self.resolved.path, config, self.device)
        self.session = Session(config, self.data, self.prompt, tokenizer, model)

    def seeds(self) -> list[int]:
        return prompting_seeds(self.config)

    def run_seed(self, seed: int, run_dir: Path, index: int) -> dict:
        """Score both dev splits with one draw of demonstrations; the first seed times the scoring first (see
        `Session.window`)."""
        config, data, session = self.config, self.data, self.session
        eval_ids = {pid for split in EVAL_SPLITS for pid in data[split]["pairID"]}
        shots = 0 if config["mode"] == "zero_shot" else 1
        plan = choose_demos(data["train"], seed, shots, config["rotate_demo_labels"], eval_ids)
        timed = session.window(plan) if index == 0 else None
        bias = session.bias(plan) if config["calibration"] == "contextual" else None
        run = {"seed": seed, "window": timed, "demonstrations": plan.record(),
               "rotate_demo_labels": plan.rotate and bool(plan.rows),
               "content_free_bias": {str(g): dict(zip(LABELS, b.tolist())) for g, b in bias.items()} if bias else None}
        with SeedMeter() as meter:  # this seed's own time and peak memory, whatever ran before it
            for split in EVAL_SPLITS:
                run[split] = session.evaluate(split, plan, bias)
        run["cost"] = meter.record()
        run.update(peak_memory_mb())
        return run

    def summarize(self, runs: list[dict]) -> dict:
        """The same split metrics as the encoder experiments, plus the answers that named no label, the
        scoring speed and the gold label counts."""
        data = self.data
        out = super().summarize(runs)
        for split in EVAL_SPLITS:
            out[split]["unmatched_share"] = float(np.mean([r[split]["unmatched_share"] for r in runs]))
            out[split]["examples_per_second"] = float(np.mean([r[split]["examples_per_second"] for r in runs]))
            gold = np.bincount(np.asarray(data[split]["label"], dtype=int), minlength=len(LABELS))
            out[split]["gold_distribution"] = {name: int(c) for name, c in zip(LABELS, gold)}
        n_eval = sum(len(data[s]) for s in EVAL_SPLITS) * len(runs)
        wall = sum(r[s]["eval_wall_time_s"] for r in runs for s in EVAL_SPLITS)
        generated = self.config["scoring"] == "generate"
        out.update(unmatched_share=float(np.mean([r[s]["unmatched_share"] for r in runs for s in EVAL_SPLITS]))
                   if generated else None,
                   eval_wall_time_s=wall, examples_per_second=n_eval / wall if wall > 0 else None)
        return out

    def method(self) -> str:
        return self.config["mode"]

    def label(self, metrics: dict) -> str:
        config = self.config
        shots = "zero-shot" if config["mode"] == "zero_shot" else "one-shot"
        extras = [self.prompt.title]
        if config["scoring"] == "generate":
            extras.append("generation")
        if config["calibration"] == "contextual":
            extras.append("calibrated")
        return f"{shots} ({', '.join(extras)})"

    def record(self, metrics: dict) -> dict:
        config, session = self.config, self.session
        return {"mode": config["mode"], "scoring": config["scoring"], "calibration": config["calibration"],
                "prompt": prompt_record(self.prompt, session.tokenizer), "precision": config["precision"],
                "device": self.device, "trainable_params": 0,
                "total_params": count_parameters(session.model)["total_params"], "trainable_share": 0.0,
                "scorer_stats": dict(session.scorer.stats)}


def run(config: dict) -> dict:
    """Score the experiment's prompt on both dev splits (once per seed for one-shot); write metrics.json."""
    return Prompting(config).run()
