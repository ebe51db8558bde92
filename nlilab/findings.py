"""Findings: sentences generated from the results, so the report's prose cannot contradict its tables.

Every sentence is built by one small function from numbers it reads out of metrics.json, and carries those
numbers (`Finding.values`) so tests can check the words against them. Accuracies are percentages with one
decimal; a difference that rounds to 0.0 points is called a tie, never a gain or a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import EVAL_SPLITS
from .metrics import COLLAPSE_MARGIN, is_collapsed

MATCHED, MISMATCHED = EVAL_SPLITS

# How the report names a method when metrics.json has no `method_label`.
METHOD_LABELS = {
    "full": "full fine-tuning", "top_layers": "top-layer fine-tuning", "lora": "LoRA", "ptuning": "P-tuning",
    "prefix": "deep prompts", "zero_shot": "zero-shot prompting", "one_shot": "one-shot prompting",
    "generation": "prompting (generated answers)", "qlora": "QLoRA classifier",
}


@dataclass
class Finding:
    topic: str  # best | versus_full | per_million | gap | collapse | failure | lora_seed | sweep | prompting | ...
    text: str
    values: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ reading
def method_label(name: str, m: dict) -> str:
    """'LoRA (lora_seed)': the method's words, then the experiment's name, which the tables use."""
    label = m.get("method_label") or METHOD_LABELS.get(m.get("mode") or "") or \
        METHOD_LABELS.get(m.get("method") or m.get("kind") or "", m.get("method") or m.get("kind") or name)
    if m.get("kind") == "qlora" and "qlora" not in label.lower():
        label = f"QLoRA {label}"  # the notebook's label describes the classifier, not the family
    return label if label == name else f"{label} ({name})"


def accuracy(m: dict | None, split: str = MATCHED) -> float | None:
    """Mean accuracy over seeds as a fraction, or None when the split was not scored."""
    value = ((m or {}).get(split) or {}).get("accuracy")
    return float(value) if value is not None else None


def spread(m: dict, split: str = MATCHED) -> float | None:
    block = m.get(split) or {}
    return float(block["accuracy_std"]) if len(block.get("accuracy_runs") or []) > 1 and \
        block.get("accuracy_std") is not None else None


def baseline(m: dict, split: str = MATCHED) -> float | None:
    value = ((m.get("majority_baseline") or {}).get(split) or {}).get("accuracy")
    return float(value) if value is not None else None


def collapsed(m: dict) -> bool:
    """The flag metrics.json carries; recomputed from the numbers when an older file lacks it."""
    if "collapsed" in m and m["collapsed"] is not None:
        return bool(m["collapsed"])
    pairs = [(accuracy(m, s), baseline(m, s)) for s in EVAL_SPLITS]
    return any(a is not None and b is not None and is_collapsed(a, b) for a, b in pairs)


def points(a: float, b: float) -> float:
    """Difference of two accuracy fractions in percentage points, rounded as the text prints it."""
    return round(100 * a - 100 * b, 1)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def signed(diff: float) -> str:
    return f"{diff:+.1f}"


def rate(value: float) -> str:
    """A learning rate as people write it: 5e-4, 2.5e-5, 0.01."""
    if value >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def millions(count: int | float) -> str:
    return f"{count / 1e6:.2f} M" if count >= 1e4 else f"{int(count):,}"


def scored(results: dict, failures: dict | None = None) -> dict:
    """Experiments with a usable score: finished (status ok), not failed in their latest run, not the data step."""
    failures = failures or {}
    return {name: m for name, m in results.items()
            if m and m.get("status", "ok") == "ok" and m.get("kind") != "data" and name not in failures
            and accuracy(m) is not None}


def full_reference(results: dict) -> tuple[str, dict] | None:
    """The first full fine-tuning experiment: the yardstick every other method is measured against."""
    return next(((n, m) for n, m in results.items() if m.get("kind") == "encoder" and m.get("method") == "full"),
                None)


# ------------------------------------------------------------------------------------------------ sentences
def best_method(results: dict) -> list[Finding]:
    usable = {n: m for n, m in results.items() if not collapsed(m)}
    if not results:
        return []
    if not usable:
        return [Finding("best", "No run is more than 2 points above the majority-class baseline on both dev "
                                "splits, so there is no meaningful best method in these results.", {})]
    ranked = sorted(usable.items(), key=lambda kv: accuracy(kv[1]), reverse=True)
    name, m = ranked[0]
    values = {"experiment": name, "matched": accuracy(m), "mismatched": accuracy(m, MISMATCHED)}
    text = f"Best on dev-matched: {method_label(name, m)} at {pct(values['matched'])}"
    if values["mismatched"] is not None:
        text += f" ({pct(values['mismatched'])} on dev-mismatched)"
    if len(ranked) > 1:
        second, sm = ranked[1]
        behind = points(values["matched"], accuracy(sm))
        values.update(runner_up=second, behind=behind)
        if behind == 0:
            text += f"; {method_label(second, sm)} ties with it"
        else:
            text += f"; the runner-up, {method_label(second, sm)}, is {behind:.1f} points behind"
        noise = max(filter(None, (spread(m), spread(sm))), default=None)
        if noise is not None:
            values["seed_spread"] = noise
            relation = "within" if behind <= 100 * noise else "larger than"
            text += f", {relation} the spread over seeds ({100 * noise:.1f} points)"
    return [Finding("best", text + ".", values)]


def versus_full(results: dict) -> list[Finding]:
    ref = full_reference(results)
    if ref is None:
        return []
    ref_name, ref_m = ref
    out = []
    if collapsed(ref_m):
        out.append(Finding("versus_full", f"Full fine-tuning ({ref_name}) itself collapsed, so the comparisons "
                                          "below are against a run that learned (almost) nothing.",
                           {"experiment": ref_name}))
    for name, m in results.items():
        if name == ref_name:
            continue
        diff = points(accuracy(m), accuracy(ref_m))
        verb = "gains" if diff > 0 else "loses"
        values = {"experiment": name, "diff": diff, "accuracy": accuracy(m), "full_accuracy": accuracy(ref_m)}
        if diff == 0:
            text = f"{method_label(name, m)} ties with full fine-tuning on dev-matched ({pct(accuracy(m))} each)"
        else:
            text = (f"{method_label(name, m)} {verb} {abs(diff):.1f} points against full fine-tuning on dev-matched "
                    f"({pct(accuracy(m))} vs {pct(accuracy(ref_m))})")
        trainable, ref_trainable = m.get("trainable_params"), ref_m.get("trainable_params")
        if trainable == 0:
            text += ", training no parameters at all"
            values["trainable_ratio"] = None
        elif trainable and ref_trainable:
            ratio = ref_trainable / trainable
            values["trainable_ratio"] = ratio
            text += (f", training {ratio:.0f} times fewer parameters" if ratio >= 1.5 else
                     f", training {1 / ratio:.1f} times as many parameters" if ratio < 1 / 1.5 else
                     f", training about as many parameters ({millions(trainable)} vs {millions(ref_trainable)})")
        ours, theirs = m.get("data_fingerprint"), ref_m.get("data_fingerprint")
        if ours and theirs and ours != theirs:  # e.g. prompting scored on fewer dev pairs to save time
            values["same_data"] = False
            text += f" (caution: scored on other data, fingerprint {ours} against {theirs})"
        out.append(Finding("versus_full", text + ".", values))
    return out


def per_million(results: dict) -> list[Finding]:
    """Accuracy per million trainable parameters, and the part of it above the majority class (raw accuracy per
    parameter flatters methods that train almost nothing and predict one class)."""
    out = []
    for name, m in results.items():
        trainable = m.get("trainable_params")
        if not trainable:
            continue
        per = 100 * accuracy(m) / (trainable / 1e6)
        values = {"experiment": name, "per_million": per, "accuracy": accuracy(m), "trainable_params": trainable}
        text = (f"{method_label(name, m)}: {per:.2f} accuracy points per million trainable parameters "
                f"({pct(accuracy(m))} from {millions(trainable)} parameters)")
        base = baseline(m)
        if base is not None:
            above = (100 * accuracy(m) - 100 * base) / (trainable / 1e6)
            values["above_majority_per_million"] = above
            text += f"; net of the majority-class baseline, {above:+.2f} points per million"
        out.append(Finding("per_million", text + ".", values))
    out.sort(key=lambda f: f.values["per_million"], reverse=True)
    return out


def matched_gap(results: dict) -> list[Finding]:
    out = []
    for name, m in results.items():
        mm = accuracy(m, MISMATCHED)
        if mm is None:
            continue
        gap = points(accuracy(m), mm)
        values = {"experiment": name, "gap": gap, "matched": accuracy(m), "mismatched": mm}
        if gap == 0:
            text = f"{method_label(name, m)} scores the same on both dev splits ({pct(mm)})"
        else:
            higher = "matched" if gap > 0 else "mismatched"
            text = (f"{method_label(name, m)} is {abs(gap):.1f} points higher on dev-{higher} "
                    f"({pct(accuracy(m))} matched vs {pct(mm)} mismatched)")
        noise = spread(m)
        if noise is not None:
            values["seed_spread"] = noise
            relation = "within" if abs(gap) <= 100 * noise else "beyond"
            text += f", {relation} its spread over seeds ({100 * noise:.1f} points)"
        out.append(Finding("gap", text + ".", values))
    return out


def collapses(results: dict) -> list[Finding]:
    if not results:
        return []
    gone = {n: m for n, m in results.items() if collapsed(m)}
    if not gone:
        return [Finding("collapse", f"No run collapsed: every one is more than {100 * COLLAPSE_MARGIN:.0f} points "
                                    "above the majority-class baseline on both dev splits.", {"collapsed": []})]
    runs = "1 run" if len(gone) == 1 else f"{len(gone)} runs"
    out = [Finding("collapse", f"{runs} collapsed, at most {100 * COLLAPSE_MARGIN:.0f} points above the "
                               f"majority-class baseline on a dev split: {', '.join(gone)}.", {"collapsed": list(gone)})]
    for name, m in gone.items():
        dist = (m.get(MATCHED) or {}).get("prediction_distribution") or {}
        total = sum(dist.values())
        values = {"experiment": name, "accuracy": accuracy(m), "baseline": baseline(m)}
        text = f"COLLAPSED: {method_label(name, m)} scores {pct(accuracy(m))} on dev-matched"
        if values["baseline"] is not None:
            text += f" against a majority-class baseline of {pct(values['baseline'])}"
        if total:
            top = max(dist, key=dist.get)
            values.update(top_label=top, top_share=dist[top] / total)
            text += f"; {pct(dist[top] / total)} of its predictions are '{top}'"
        out.append(Finding("collapse", text + ".", values))
    return out


def failures_found(failures: dict) -> list[Finding]:
    out = []
    for name, fail in failures.items():
        last = next((line for line in reversed(str(fail.get("error", "")).splitlines()) if line.strip()), "")
        out.append(Finding("failure", f"FAILED: {name} did not finish" + (f" ({last.strip()})" if last else "") +
                           "; it is left out of every comparison.", {"experiment": name, "error": last}))
    return out


def _learning_rate(m: dict) -> float | None:
    params = (m.get("run_record") or {}).get("parameters") or {}
    lr = (params.get("train") or {}).get("learning_rate")
    if lr is None:
        runs = m.get("runs") or []
        lr = runs[0].get("learning_rate") if runs else None
    return float(lr) if lr is not None else None


SEED_LORA_LR = 2e-5  # the seed report ran LoRA at its full fine-tuning learning rate


def _is_seed_variant(name: str, m: dict, full_lr: float | None) -> bool:
    """LoRA 'at the seed's settings': named so, or run at the full fine-tuning learning rate (the seed's choice,
    whatever that rate is in this profile), or at the seed's own 2e-5."""
    lr = _learning_rate(m)
    return "seed" in f"{name} {m.get('method_label', '')}".lower() or lr in (full_lr, SEED_LORA_LR)


def lora_seed_settings(results: dict) -> list[Finding]:
    """LoRA at the seed report's settings against LoRA at the recommended ones (the best other LoRA run). With
    no recognisable seed variant, the lowest learning rate is compared with the best, in neutral words."""
    loras = {n: m for n, m in results.items()
             if m.get("method") == "lora" and not m.get("sweep") and _learning_rate(m) is not None}
    if len(loras) < 2:
        return []
    ref = full_reference(results)
    full_lr = _learning_rate(ref[1]) if ref else None
    seedish = [n for n, m in loras.items() if _is_seed_variant(n, m, full_lr)]
    seed_name = seedish[0] if seedish else min(loras, key=lambda n: _learning_rate(loras[n]))
    others = {n: m for n, m in loras.items() if n != seed_name}
    rec_name = max(others, key=lambda n: accuracy(others[n]))
    s, r = loras[seed_name], loras[rec_name]
    diff = points(accuracy(r), accuracy(s))
    values = {"seed": seed_name, "recommended": rec_name, "diff": diff, "seed_lr": _learning_rate(s),
              "recommended_lr": _learning_rate(r), "seed_accuracy": accuracy(s), "recommended_accuracy": accuracy(r),
              "recognised": bool(seedish)}
    outcome = "the same accuracy" if diff == 0 else f"{abs(diff):.1f} points {'more' if diff > 0 else 'less'}"
    who = "LoRA at the seed report's settings" if seedish else "LoRA at its lowest learning rate"
    text = (f"{who} ({seed_name}, learning rate {rate(values['seed_lr'])}) reaches {pct(accuracy(s))} on "
            f"dev-matched; at learning rate {rate(values['recommended_lr'])} ({rec_name}) it reaches "
            f"{pct(accuracy(r))}, {outcome}.")
    return [Finding("lora_seed", text, values)]


def lr_sweep(results: dict) -> list[Finding]:
    out = []
    for name, m in results.items():
        points_ = [p for p in ((m.get("sweep") or {}).get("points") or [])
                   if accuracy(p) is not None and p.get("value") is not None]
        if len(points_) < 2:
            continue
        best = max(points_, key=accuracy)
        worst = min(points_, key=accuracy)
        values = {"experiment": name, "best_value": best["value"], "best_accuracy": accuracy(best),
                  "worst_value": worst["value"], "worst_accuracy": accuracy(worst), "n": len(points_)}
        text = (f"The learning-rate sweep of {method_label(name, m)} tried {len(points_)} values: "
                f"{rate(best['value'])} is best ({pct(accuracy(best))} on dev-matched) and "
                f"{rate(worst['value'])} worst "
                f"({pct(accuracy(worst))}), a range of {points(accuracy(best), accuracy(worst)):.1f} points")
        gone = [p["value"] for p in points_ if p.get("collapsed")]
        if gone:
            values["collapsed_values"] = gone
            text += f"; it collapsed at {', '.join(rate(v) for v in gone)}"
        out.append(Finding("sweep", text + ".", values))
    return out


def prompting(results: dict) -> list[Finding]:
    prompts = {n: m for n, m in results.items() if m.get("kind") == "prompting"}
    out = []
    for name, m in prompts.items():
        base = baseline(m)
        if base is None:
            continue
        diff = points(accuracy(m), base)
        relation = "above" if diff > 0 else ("below" if diff < 0 else "level with")
        text = (f"{method_label(name, m)} scores {pct(accuracy(m))} on dev-matched, "
                + (f"{abs(diff):.1f} points {relation} " if diff else f"{relation} ")
                + f"the majority-class baseline ({pct(base)})")
        values = {"experiment": name, "accuracy": accuracy(m), "baseline": base, "diff": diff}
        if m.get("unmatched_share") is not None:
            values["unmatched_share"] = float(m["unmatched_share"])
            text += f"; {pct(values['unmatched_share'])} of its answers matched no label"
        out.append(Finding("prompting", text + ".", values))
    out += _one_versus_zero_shot(prompts)
    return out


def _prompt_design(m: dict) -> tuple:
    """What must match for a zero-/one-shot pair to isolate the demonstration: prompt name and version,
    calibration and model."""
    prompt = m.get("prompt") if isinstance(m.get("prompt"), dict) else {"name": m.get("prompt")}
    return prompt.get("name"), prompt.get("version"), m.get("calibration"), m.get("model")


def _one_versus_zero_shot(prompts: dict) -> list[Finding]:
    """One sentence per one-shot run that has a zero-shot run of the same prompt design: comparing across
    designs would credit (or blame) the demonstration for the change of template."""
    out = []
    for on, om in prompts.items():
        if om.get("mode") != "one_shot":
            continue
        match = [(zn, zm) for zn, zm in prompts.items()
                 if zm.get("mode") == "zero_shot" and _prompt_design(zm) == _prompt_design(om)]
        if not match:
            continue
        zn, zm = match[0]
        diff = points(accuracy(om), accuracy(zm))
        words = (f"{abs(diff):.1f} points {'above' if diff > 0 else 'below'}" if diff else "level with")
        out.append(Finding("prompting", f"One example in the prompt ({on}) puts accuracy {words} zero-shot with the "
                                        f"same prompt ({zn}): {pct(accuracy(om))} vs {pct(accuracy(zm))} on "
                                        "dev-matched.", {"zero_shot": zn, "one_shot": on, "diff": diff}))
    return out


def _footprint(m: dict) -> tuple[float | None, float | None, str]:
    """(MB as loaded, MB at 16 bits, form): the QLoRA notebook's {loaded, bf16, loaded_as} record, or the
    shorter {4bit, 16bit} one."""
    foot = m.get("weight_footprint_mb") or {}
    low = foot.get("loaded", foot.get("4bit"))
    high = foot.get("bf16", foot.get("16bit"))
    form = foot.get("loaded_as") or m.get("quantization") or "quantized"
    return low, high, str(form)


def quantization(results: dict) -> list[Finding]:
    out = []
    for name, m in results.items():
        low, high, form = _footprint(m)
        if not low or not high:
            continue
        ratio = high / low
        values = {"experiment": name, "low_mb": low, "high_mb": high, "ratio": ratio, "form": form}
        if form == "none":
            note = m.get("quantization_note")
            text = (f"{method_label(name, m)} ran on unquantized weights ({low:.1f} MB against {high:.1f} MB at 16 "
                    "bits)" + (f": {note}" if note else "") + ".")
        else:
            tables = (m.get("weight_footprint_mb") or {}).get("embeddings_4bit")
            where = " (linear layers and embedding table)" if tables else ""
            text = (f"{method_label(name, m)} holds its frozen base weights{where} as {form}: {low:.1f} MB instead of "
                    f"{high:.1f} MB at 16 bits, {ratio:.1f} times smaller.")
        out.append(Finding("quantization", text, values))
    return out


def training_time(results: dict) -> list[Finding]:
    ref = full_reference(results)
    if ref is None or not ref[1].get("train_wall_time_s"):
        return []
    ref_name, ref_m = ref
    full_s = float(ref_m["train_wall_time_s"])
    out = []
    for name, m in results.items():
        t = m.get("train_wall_time_s")
        if name == ref_name or not t:
            continue
        ratio = float(t) / full_s
        values = {"experiment": name, "seconds": float(t), "full_seconds": full_s, "ratio": ratio}
        out.append(Finding("time", f"{method_label(name, m)} trains in {float(t):.0f} s per seed, {ratio:.2f} times "
                                   f"the time of full fine-tuning ({full_s:.0f} s).", values))
    return out


TOPICS = (
    ("best", "Best method"), ("failure", "Failed runs"), ("collapse", "Collapsed runs"),
    ("versus_full", "Against full fine-tuning"), ("lora_seed", "LoRA: the seed's settings against ours"),
    ("sweep", "LoRA learning-rate sweep"), ("per_million", "Accuracy per million trainable parameters"),
    ("time", "Training time"), ("gap", "Matched against mismatched"), ("prompting", "Prompting"),
    ("quantization", "Quantization"),
)


def compute(results: dict, failures: dict | None = None) -> list[Finding]:
    """Every finding for one profile's results (name -> metrics.json) and failures (name -> failure.json)."""
    failures = failures or {}
    usable = scored(results, failures)
    out = failures_found(failures) + best_method(usable) + collapses(usable) + versus_full(usable)
    out += lora_seed_settings(usable) + lr_sweep(usable) + per_million(usable) + training_time(usable)
    out += matched_gap(usable) + prompting(usable) + quantization(usable)
    for f in out:  # a sentence starts with a capital, even when it starts with a method's name
        f.text = f.text[:1].upper() + f.text[1:]
    order = {topic: i for i, (topic, _) in enumerate(TOPICS)}
    return sorted(out, key=lambda f: order.get(f.topic, len(order)))  # stable: keeps order within a topic


def by_topic(findings: list[Finding]) -> list[tuple[str, list[Finding]]]:
    titles = dict(TOPICS)
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.topic, []).append(f)
    return [(titles.get(t, t), fs) for t, fs in groups.items()]


def first(findings: list[Finding], topic: str, experiment: str | None = None) -> Finding | None:
    """The finding the method notes cite, if the results produced it."""
    return next((f for f in findings if f.topic == topic
                 and (experiment is None or f.values.get("experiment") == experiment)), None)

