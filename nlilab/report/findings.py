"""Findings: sentences generated from the results, so the report's prose cannot contradict its tables.

Every sentence is built by one small function from numbers it reads out of metrics.json, and carries those
numbers (`Finding.values`) so tests can check the words against them. Accuracies are percentages with one
decimal and a 95% interval in brackets. Two methods scored on the same rows are called "higher", "lower" or
"not distinguishable on these N rows" from the paired interval of their difference (nlilab.evaluation.stats), never from
the point estimates; methods scored on different rows are compared through their own (unpaired) intervals, and
the sentence says so. A short summary answers the study's questions first; the detail follows, grouped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from nlilab import EVAL_SPLITS
from nlilab.evaluation import stats
from nlilab.evaluation.metrics import COLLAPSE_MARGIN, is_collapsed
from nlilab.report import formats
from nlilab.report.formats import ci, rate

MATCHED, MISMATCHED = EVAL_SPLITS

# How the report names a method when metrics.json has no `method_label`.
METHOD_LABELS = {
    "full": "full fine-tuning", "top_layers": "top-layer fine-tuning", "lora": "LoRA", "ptuning": "P-tuning",
    "prefix": "deep prompts", "zero_shot": "zero-shot prompting", "one_shot": "one-shot prompting",
    "generation": "prompting (generated answers)", "qlora": "QLoRA classifier",
}


@dataclass
class Finding:
    topic: str  # summary | selection | failure | collapse | versus_full | lora_seed | sweep | prompting | ...
    text: str
    values: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ reading
def stored_label(m: dict, method: str) -> str:
    """The label the experiment wrote into metrics.json; for an older file without one, the report's words for
    its mode or `method`, else `method` itself."""
    return m.get("method_label") or METHOD_LABELS.get(m.get("mode") or "") or METHOD_LABELS.get(method, method)


def display_label(name: str, m: dict) -> str:
    """'LoRA (lora_seed)': the method's words, then the experiment's name, which the tables use."""
    label = stored_label(m, m.get("method") or m.get("kind") or "") or name
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


pct = partial(formats.pct, unit="%")  # in a sentence the number carries its unit


def signed(diff: float) -> str:
    return f"{diff:+.1f}"


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


# ------------------------------------------------------------------------------------------------ intervals
def margin_points() -> str:
    """The collapse margin as the text prints it (from metrics.COLLAPSE_MARGIN, never typed)."""
    return f"{100 * COLLAPSE_MARGIN:g} points"


def interval(m: dict | None, split: str = MATCHED) -> dict | None:
    """The accuracy's 95% interval: stored, else computed from the predictions, else None (older files)."""
    block = (m or {}).get(split)
    return stats.block_interval(block) if block else None


def acc_ci(m: dict, split: str = MATCHED) -> str:
    return pct(accuracy(m, split)) + ci(interval(m, split))


def contrast(a_name: str, a: dict, b_name: str, b: dict, split: str = MATCHED) -> dict:
    """a against b on one split, in points: paired where they share rows (by pair id), else unpaired.

    kind: 'paired' (verdict from the paired interval), 'unpaired' (different rows: verdict from whether the two
    intervals overlap) or 'none' (an older file without predictions: no verdict).
    """
    out = {"a": a_name, "b": b_name, "diff": points(accuracy(a, split), accuracy(b, split))}
    paired = stats.compare(a[split], b[split])
    if paired is not None:
        out.update(kind="paired", low=round(100 * paired["low"], 1), high=round(100 * paired["high"], 1),
                   n=paired["n"], verdict=stats.verdict(paired), diff=round(100 * paired["diff"], 1))
        return out
    ia, ib = interval(a, split), interval(b, split)
    if ia and ib:
        words = "not distinguishable" if stats.intervals_overlap(ia, ib) else \
            ("higher" if accuracy(a, split) > accuracy(b, split) else "lower")
        out.update(kind="unpaired", verdict=words)
        return out
    out.update(kind="none", verdict="not judged")
    return out


def contrast_text(c: dict) -> str:
    """The difference with its interval and verdict, e.g. '-4.4 points [-16.3, 8.2]'."""
    if c["kind"] == "paired":
        return f"{signed(c['diff'])} points [{signed(c['low'])}, {signed(c['high'])}]"
    if c["kind"] == "unpaired":
        return f"{signed(c['diff'])} points (on different rows, unpaired intervals)"
    return f"{signed(c['diff'])} points (no interval: older results without predictions)"


def _grouped(contrasts: list[dict], names: dict) -> list[tuple[str, list[dict]]]:
    """Contrasts grouped by verdict, in the order higher, not distinguishable, lower, not judged."""
    order = ("higher", "not distinguishable", "lower", "not judged")
    groups: dict[str, list[dict]] = {}
    for c in contrasts:
        groups.setdefault(c["verdict"], []).append(c)
    return sorted(groups.items(), key=lambda kv: next(i for i, w in enumerate(order) if kv[0].startswith(w)))


def _verdict_head(verdict: str, other: str) -> str:
    """'Lower than X', 'Not distinguishable from X on these 90 rows', 'Not judged against X'."""
    if verdict in ("higher", "lower"):
        return f"{verdict.capitalize()} than {other}"
    if verdict == "not judged":
        return f"Not judged against {other}"
    return verdict.replace("not distinguishable", f"Not distinguishable from {other}")


def _listing(cs: list[dict], results: dict) -> str:
    return "; ".join(f"{display_label(c['a'], results[c['a']])} {contrast_text(c)}" for c in cs)


def _ranked(results: dict) -> list[tuple[str, dict]]:
    usable = {n: m for n, m in results.items() if not collapsed(m)}
    return sorted(usable.items(), key=lambda kv: accuracy(kv[1]), reverse=True)


# ------------------------------------------------------------------------------------------------ summary
def summary_best(results: dict) -> list[Finding]:
    if not results:
        return []
    ranked = _ranked(results)
    if not ranked:
        return [Finding("summary", f"No run is more than {margin_points()} above the majority-class baseline on "
                                   "both test splits, so there is no meaningful best method in these results.",
                        {"experiment": None})]
    name, m = ranked[0]
    contrasts = [contrast(n, o, name, m) for n, o in ranked[1:]]
    values = {"experiment": name, "matched": accuracy(m), "mismatched": accuracy(m, MISMATCHED),
              "interval": interval(m), "contrasts": {c["a"]: c for c in contrasts}}
    text = f"Best on dev-matched: {display_label(name, m)} at {acc_ci(m)}"
    if values["mismatched"] is not None:
        text += f" ({acc_ci(m, MISMATCHED)} on dev-mismatched)"
    text += "."
    for verdict, cs in _grouped(contrasts, results):
        head = _verdict_head(verdict, "it")
        text += f" {head}: {_listing(cs, results)}."
    return [Finding("summary", text, values)]


def summary_lora(results: dict, detail: list[Finding]) -> list[Finding]:
    """LoRA's learning rate: the seed-settings contrast and the sweep's choice, from their detail findings."""
    seed = next((f for f in detail if f.topic == "lora_seed"), None)
    sweeps = [f for f in detail if f.topic == "sweep"]
    if seed is None and not sweeps:
        return []
    parts = []
    if seed is not None:
        c = seed.values["contrast"]
        parts.append(f"LoRA at learning rate {rate(seed.values['recommended_lr'])} against "
                     f"{rate(seed.values['seed_lr'])} ({seed.values['seed']}): {contrast_text(c)}, {c['verdict']}"
                     + (f", with {', '.join(seed.values['differs'][1:])} also different"
                        if len(seed.values["differs"]) > 1 else ""))
    for f in sweeps:
        parts.append(f"the sweep ({f.values['experiment']}) chose {rate(f.values['best_value'])} by "
                     f"{f.values['selected_by']}, which scores {pct(f.values['chosen_test_accuracy'])} on dev-matched")
    text = "LoRA's learning rate: " + "; ".join(parts) + "."
    return [Finding("summary", text, {"topic": "lora", "experiments": [seed.values["seed"]] if seed else []})]


def summary_soft_prompts(results: dict, failures: dict, failed_all: dict) -> list[Finding]:
    soft = {n: m for n, m in results.items() if m.get("method") in ("ptuning", "prefix")}
    gone = [n for n in failures if (failed_all.get(n) or {}).get("kind", "encoder") == "encoder"
            and any(k in n for k in ("deep", "prefix", "ptuning"))]  # a failed run left no method to read
    if not soft and not gone:
        return []
    ref = full_reference(results)
    parts = []
    for name, m in soft.items():
        words = f"{display_label(name, m)} {acc_ci(m)}"
        if collapsed(m):
            words += f", collapsed (majority class {pct(baseline(m))})" if baseline(m) is not None else ", collapsed"
        if ref is not None:
            c = contrast(name, m, *ref)
            words += f", against full fine-tuning {contrast_text(c)}, {c['verdict']}"
        parts.append(words)
    parts += [f"{n} failed" for n in gone]
    return [Finding("summary", "Soft prompts on the frozen encoder: " + "; ".join(parts) + ".",
                    {"topic": "soft_prompts", "experiments": list(soft), "failed": gone})]


def summary_llm(results: dict) -> list[Finding]:
    llm = {n: m for n, m in results.items() if m.get("kind") in ("prompting", "qlora")}
    if not llm:
        return []
    zero = next(((n, m) for n, m in llm.items() if m.get("mode") == "zero_shot"), None)
    parts, values = [], {"topic": "llm", "experiments": list(llm), "contrasts": {}}
    for name, m in llm.items():
        words = f"{display_label(name, m)} {acc_ci(m)}"
        if zero is not None and name != zero[0] and m.get("mode") != "zero_shot":
            c = contrast(name, m, *zero)
            values["contrasts"][name] = c
            words += f" ({contrast_text(c)} against zero-shot, {c['verdict']})"
        parts.append(words)
    return [Finding("summary", "The decoder LM: " + "; ".join(parts) + ".", values)]


def summary_cost(results: dict) -> list[Finding]:
    fair = {n: m for n, m in results.items() if (m.get("cost") or {}).get("train_cpu_time_s")}
    if not fair:
        return []
    cheapest = min(fair, key=lambda n: fair[n]["cost"]["train_cpu_time_s"])
    dearest = max(fair, key=lambda n: fair[n]["cost"]["train_cpu_time_s"])
    lo, hi = fair[cheapest]["cost"]["train_cpu_time_s"], fair[dearest]["cost"]["train_cpu_time_s"]
    text = (f"Cost (CPU time of training per seed, comparable whatever ran beside it): from "
            f"{lo:.0f} s ({display_label(cheapest, fair[cheapest])}) to {hi:.0f} s "
            f"({display_label(dearest, fair[dearest])}), {hi / lo:.1f} times as much; the detail is under Cost.")
    return [Finding("summary", text, {"cheapest": cheapest, "dearest": dearest, "ratio": hi / lo})]


# ------------------------------------------------------------------------------------------------ detail
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


def selection(results: dict) -> list[Finding]:
    """Which split chose what: the held-out validation split for every choice, the dev sets only for testing."""
    chosen = {n: m["selection"] for n, m in results.items()
              if (m.get("selection") or {}).get("what") not in (None, "nothing")}
    recorded = [n for n, m in results.items() if m.get("selection")]
    unrecorded = [n for n, m in results.items() if not m.get("selection") and m.get("kind") in ("encoder", "qlora")]
    if not recorded and not unrecorded:
        return []
    rows = sorted({m["selection"].get("rows") for m in results.values() if m.get("selection")} - {None})
    text = ("Model selection: every choice made by looking at scores used the held-out validation split "
            + (f"({', '.join(str(r) for r in rows)} rows drawn from the training data, stratified by label)"
               if rows else "(held out from the training data)"))
    text += (": " + "; ".join(f"{n} chose {s['what']}" for n, s in chosen.items())) if chosen else \
        ": nothing was chosen by score in these runs"
    text += (". dev-matched and dev-mismatched are test sets, scored once per final model and never used to "
             "choose anything")
    if unrecorded:
        text += (f". {', '.join(unrecorded)} predate{'s' if len(unrecorded) == 1 else ''} this record: what "
                 "{} chose, if anything, is not known".format("it" if len(unrecorded) == 1 else "they"))
    return [Finding("selection", text + ".", {"chosen": chosen, "unrecorded": unrecorded, "rows": rows})]


def collapses(results: dict) -> list[Finding]:
    if not results:
        return []
    gone = {n: m for n, m in results.items() if collapsed(m)}
    if not gone:
        return [Finding("collapse", f"No run collapsed: every one is more than {margin_points()} above the "
                                    "majority-class baseline on both test splits.", {"collapsed": []})]
    parts = []
    for name, m in gone.items():
        dist = (m.get(MATCHED) or {}).get("prediction_distribution") or {}
        words = f"{display_label(name, m)} scores {pct(accuracy(m))}"
        if baseline(m) is not None:
            words += f" against a majority class of {pct(baseline(m))}"
        if sum(dist.values()):
            top = max(dist, key=dist.get)
            words += f", {pct(dist[top] / sum(dist.values()))} of its predictions '{top}'"
        parts.append(words)
    return [Finding("collapse", f"COLLAPSED (at most {margin_points()} above the majority-class baseline on a test "
                                f"split): {'; '.join(parts)}.", {"collapsed": list(gone), "experiments": list(gone)})]


def versus_full(results: dict) -> list[Finding]:
    """Every other method against full fine-tuning on dev-matched, grouped by verdict."""
    ref = full_reference(results)
    if ref is None:
        return []
    ref_name, ref_m = ref
    contrasts = [contrast(n, m, ref_name, ref_m) for n, m in results.items() if n != ref_name]
    out = []
    if collapsed(ref_m):
        out.append(Finding("versus_full", f"Full fine-tuning ({ref_name}) itself collapsed, so the comparisons "
                                          "below are against a run that learned (almost) nothing.",
                           {"experiment": ref_name}))
    for verdict, cs in _grouped(contrasts, results):
        head = _verdict_head(verdict, "full fine-tuning")
        text = f"{head} ({ref_name}, {acc_ci(ref_m)}) on dev-matched: {_listing(cs, results)}."
        other_data = [c["a"] for c in cs if results[c["a"]].get("data_fingerprint") not in
                      (None, ref_m.get("data_fingerprint")) and ref_m.get("data_fingerprint")]
        if other_data:
            text += f" Caution: scored on other data (another fingerprint): {', '.join(other_data)}."
        out.append(Finding("versus_full", text, {"verdict": verdict, "experiments": [c["a"] for c in cs],
                                                 "contrasts": {c["a"]: c for c in cs}, "other_data": other_data}))
    return out


def per_million(results: dict) -> list[Finding]:
    """Accuracy above the majority class per million trainable parameters, one ranked sentence (raw accuracy per
    parameter flatters methods that train almost nothing and predict one class)."""
    rows = []
    for name, m in results.items():
        trainable, base = m.get("trainable_params"), baseline(m)
        if trainable and base is not None:
            rows.append((name, (100 * accuracy(m) - 100 * base) / (trainable / 1e6), trainable))
    if not rows:
        return []
    rows.sort(key=lambda r: r[1], reverse=True)
    text = ("Accuracy points above the majority class per million trainable parameters, highest first: "
            + "; ".join(f"{display_label(n, results[n])} {v:+.2f} ({millions(t)} trained)" for n, v, t in rows) + ".")
    return [Finding("per_million", text, {"ranking": [(n, v) for n, v, _ in rows],
                                          "experiments": [n for n, _, _ in rows]})]


def matched_gap(results: dict) -> list[Finding]:
    """Matched against mismatched: different rows, so only the two unpaired intervals can be compared."""
    rows = []
    for name, m in results.items():
        if accuracy(m, MISMATCHED) is None:
            continue
        im, imm = interval(m), interval(m, MISMATCHED)
        apart = None if not (im and imm) else not stats.intervals_overlap(im, imm)
        rows.append((name, points(accuracy(m), accuracy(m, MISMATCHED)), apart))
    if not rows:
        return []
    apart = [n for n, _, a in rows if a]
    text = ("Dev-matched against dev-mismatched (different rows, so unpaired intervals; points matched minus "
            "mismatched): " + "; ".join(f"{n} {signed(g)}" for n, g, _ in rows) + ". "
            + (f"The two intervals do not overlap for {', '.join(apart)}." if apart else
               "Their intervals overlap for every method that has them: no gap is distinguishable."))
    return [Finding("gap", text, {"gaps": {n: g for n, g, _ in rows}, "apart": apart,
                                  "experiments": [n for n, _, _ in rows]})]


def _lora_settings(m: dict) -> dict:
    params = (m.get("run_record") or {}).get("parameters") or {}
    lora = params.get("lora") or {}
    return {"learning rate": _learning_rate(m), "r": lora.get("r"), "alpha": lora.get("alpha")}


def _setting_text(settings: dict) -> str:
    return ", ".join(f"{k} {rate(v) if k == 'learning rate' else f'{v:g}'}" for k, v in settings.items()
                     if v is not None)


def lora_seed_settings(results: dict) -> list[Finding]:
    """LoRA at the seed report's settings against LoRA at the recommended ones (the best other LoRA run), naming
    every setting in which the two runs differ. With no recognisable seed variant, the lowest learning rate is
    compared with the best, in neutral words."""
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
    ss, rs = _lora_settings(s), _lora_settings(r)
    differs = [k for k in ss if ss[k] != rs[k] and None not in (ss[k], rs[k])]
    c = contrast(rec_name, r, seed_name, s)
    values = {"seed": seed_name, "recommended": rec_name, "diff": c["diff"], "contrast": c,
              "seed_lr": ss["learning rate"], "recommended_lr": rs["learning rate"], "differs": differs,
              "seed_accuracy": accuracy(s), "recommended_accuracy": accuracy(r), "recognised": bool(seedish),
              "experiments": [seed_name, rec_name]}
    who = "LoRA at the seed report's settings" if seedish else "LoRA at its lowest learning rate"
    text = (f"{who} ({seed_name}: {_setting_text(ss)}) reaches {acc_ci(s)} on dev-matched; {rec_name} "
            f"({_setting_text(rs)}) reaches {acc_ci(r)}: {contrast_text(c)}, {c['verdict']}.")
    if len(differs) > 1:
        text += (f" The two runs differ in {', '.join(differs[:-1])} and {differs[-1]}, so the difference is not "
                 "the learning rate's alone.")
    elif differs:
        text += f" They differ only in {differs[0]}."
    return [Finding("lora_seed", text, values)]


def lr_sweep(results: dict) -> list[Finding]:
    out = []
    for name, m in results.items():
        sweep = m.get("sweep") or {}
        pts = [p for p in sweep.get("points") or [] if p.get("value") is not None]
        by = "validation" if all(accuracy(p, "validation") is not None for p in pts) else MATCHED
        pts = [p for p in pts if accuracy(p, by) is not None]
        if len(pts) < 2:
            continue
        chosen = next((p for p in pts if p["value"] == m.get("best_value")), max(pts, key=lambda p: accuracy(p, by)))
        worst = min(pts, key=lambda p: accuracy(p, by))
        selected_by = sweep.get("selected_by") or f"{by} accuracy"
        values = {"experiment": name, "best_value": chosen["value"], "selected_by": selected_by,
                  "chosen_selection_accuracy": accuracy(chosen, by), "chosen_test_accuracy": accuracy(chosen),
                  "worst_value": worst["value"], "n": len(pts), "experiments": [name]}
        split_words = (f"the held-out validation split ({chosen['validation'].get('n')} rows)" if by == "validation"
                       else "dev-matched, a test split (an older file: this choice and its test score share rows)")
        text = (f"The learning-rate sweep of {display_label(name, m)} tried {len(pts)} values and chose "
                f"{rate(chosen['value'])} by {selected_by} on {split_words}, where it scored "
                f"{pct(accuracy(chosen, by))} (worst: {rate(worst['value'])}, {pct(accuracy(worst, by))}). The chosen "
                f"value's test score: {acc_ci(chosen)} on dev-matched")
        gone = [p["value"] for p in pts if p.get("collapsed")]
        if gone:
            values["collapsed_values"] = gone
            text += f"; the sweep collapsed at {', '.join(rate(v) for v in gone)}"
        if sweep.get("total_cpu_time_s") or sweep.get("total_wall_time_s"):
            values["total_cpu_time_s"] = sweep.get("total_cpu_time_s")
            text += (f". The whole sweep cost {sweep.get('total_cpu_time_s') or 0:.0f} s of CPU time "
                     f"({sweep.get('total_wall_time_s') or 0:.0f} s wall)")
        out.append(Finding("sweep", text + ".", values))
    return out


def prompting(results: dict) -> list[Finding]:
    """The prompts against the majority class (one sentence), then the paired LLM contrasts."""
    prompts = {n: m for n, m in results.items() if m.get("kind") == "prompting" and baseline(m) is not None}
    out = []
    if prompts:
        parts, values = [], {"experiments": list(prompts), "above": []}
        for name, m in prompts.items():
            iv = interval(m)
            above = iv is not None and iv["low"] > baseline(m)
            values["above"] += [name] if above else []
            parts.append(f"{display_label(name, m)} {acc_ci(m)} against {pct(baseline(m))}"
                         + (f" ({pct(float(m['unmatched_share']))} of its answers named no label)"
                            if m.get("unmatched_share") else ""))
        text = ("Prompting against the majority class on dev-matched: " + "; ".join(parts) + ". "
                + (f"Above it, interval clear of the baseline: {', '.join(values['above'])}." if values["above"]
                   else "No prompt's interval clears the majority-class baseline."))
        out.append(Finding("prompting", text, values))
    out += _one_versus_zero_shot({n: m for n, m in results.items() if m.get("kind") == "prompting"})
    out += _qlora_versus_prompting(results)
    return out


def _prompt_design(m: dict) -> tuple:
    """What must match for a zero-/one-shot pair to isolate the demonstration: prompt name and version,
    calibration and model."""
    prompt = m.get("prompt") if isinstance(m.get("prompt"), dict) else {"name": m.get("prompt")}
    return prompt.get("name"), prompt.get("version"), m.get("calibration"), m.get("model")


def _footprint(m: dict) -> tuple[float | None, float | None, str]:
    """(MB as loaded, MB at 16 bits, form): the QLoRA notebook's {loaded, bf16, loaded_as} record, or the
    shorter {4bit, 16bit} one."""
    foot = m.get("weight_footprint_mb") or {}
    low = foot.get("loaded", foot.get("4bit"))
    high = foot.get("bf16", foot.get("16bit"))
    form = foot.get("loaded_as") or m.get("quantization") or "quantized"
    return low, high, str(form)


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
        c = contrast(on, om, zn, zm)
        out.append(Finding("prompting", f"One example in the prompt ({on}, {acc_ci(om)}) against zero-shot with the "
                                        f"same prompt ({zn}, {acc_ci(zm)}): {contrast_text(c)}, {c['verdict']}.",
                           {"zero_shot": zn, "one_shot": on, "diff": c["diff"], "contrast": c}))
    return out


def _qlora_versus_prompting(results: dict) -> list[Finding]:
    """The QLoRA classifier against zero-shot prompting of the same model: what training the LLM buys."""
    out = []
    for qn, qm in results.items():
        if qm.get("kind") != "qlora":
            continue
        zero = next(((n, m) for n, m in results.items() if m.get("mode") == "zero_shot"
                     and m.get("model") == qm.get("model")), None)
        if zero is None:
            continue
        c = contrast(qn, qm, *zero)
        out.append(Finding("prompting", f"The QLoRA classifier ({qn}, {acc_ci(qm)}) against zero-shot prompting of "
                                        f"the same model ({zero[0]}, {acc_ci(zero[1])}): {contrast_text(c)}, "
                                        f"{c['verdict']}.", {"experiment": qn, "zero_shot": zero[0], "contrast": c}))
    return out


def provenance_text(m: dict) -> str:
    """What the weights were before loading, e.g. 'a Q4_1 GGUF file, dequantized to bfloat16', or ''."""
    prov = m.get("model_provenance") or {}
    if not prov.get("file_quantization"):
        return ""
    return (f"its weights came as a {prov['file_quantization']} {prov.get('file_format', '')} file "
            f"({prov.get('source', 'source not recorded')}), loaded as {prov.get('loaded_as', 'dequantized')}, "
            f"so its 16-bit baseline is a 16-bit copy of {prov['file_quantization']}-rounded weights, not the "
            "original 16-bit model").replace("  ", " ")


def quantization(results: dict) -> list[Finding]:
    out = []
    for name, m in results.items():
        low, high, form = _footprint(m)
        if not low or not high:
            continue
        ratio = high / low
        values = {"experiment": name, "low_mb": low, "high_mb": high, "ratio": ratio, "form": form,
                  "provenance": m.get("model_provenance")}
        if form == "none":
            note = m.get("quantization_note")
            text = (f"{display_label(name, m)} ran on unquantized weights ({low:.1f} MB against {high:.1f} MB at 16 "
                    "bits)" + (f": {note}" if note else ""))
        else:
            tables = (m.get("weight_footprint_mb") or {}).get("embeddings_4bit")
            where = " (linear layers and embedding table)" if tables else ""
            text = (f"{display_label(name, m)} holds its frozen base weights{where} as {form}: {low:.1f} MB instead of "
                    f"{high:.1f} MB at 16 bits, {ratio:.1f} times smaller (static footprint)")
        training_peak = (m.get("cost") or {}).get("training_peak_mb")
        if training_peak:
            values["training_peak_mb"] = training_peak
            text += f"; its peak while training, after PEFT's up-casts, was {training_peak:.0f} MB"
        if provenance_text(m):
            text += "; " + provenance_text(m)
        out.append(Finding("quantization", text + ".", values))
    return out


def _wall_words(m: dict) -> str:
    """Wall time per seed with what ran beside it; never used to compare methods."""
    t = m.get("train_wall_time_s")
    beside = len((m.get("schedule") or {}).get("overlapped_with") or [])
    return f"{float(t):.0f} s wall" + (f" (ran beside {beside} other{'s' if beside > 1 else ''})" if beside else "")


def training_cost(results: dict) -> list[Finding]:
    """Fair cost figures: CPU time per seed, exclusive-window throughput, per-seed peak memory (m['cost']); wall
    times only beside how many experiments overlapped, and never compared."""
    fair = {n: m for n, m in results.items() if (m.get("cost") or {}).get("train_cpu_time_s")}
    ref = full_reference(fair)
    out = []
    if fair:
        base = ref[1]["cost"] if ref else None
        parts = []
        for name, m in fair.items():
            c = m["cost"]
            words = f"{display_label(name, m)} {c['train_cpu_time_s']:.0f} s CPU"
            if base and name != ref[0]:
                words += f" ({c['train_cpu_time_s'] / base['train_cpu_time_s']:.2f}x full fine-tuning)"
            sps = (c.get("window") or {}).get("samples_per_second")
            if sps:
                words += f", {sps:.1f} samples/s"
            if c.get("peak_rss_mb"):
                words += f", peak {c['peak_rss_mb']:.0f} MB"
            parts.append(words)
        how = next((m["cost"].get("how") for m in fair.values() if m["cost"].get("how")), "")
        out.append(Finding("time", "Training cost per seed (CPU time, throughput in an exclusive timing window, "
                                   "per-seed peak resident memory): " + "; ".join(parts) + "."
                           + (f" How: {how}" if how else ""),
                           {"experiments": list(fair), "cpu_s": {n: m["cost"]["train_cpu_time_s"]
                                                                   for n, m in fair.items()}}))
    walls = {n: m for n, m in results.items() if m.get("train_wall_time_s")}
    if walls:
        old = [n for n in walls if n not in fair]
        text = ("Wall time per seed depends on what else ran, so it is shown, not compared: "
                + "; ".join(f"{n} {_wall_words(m)}" for n, m in walls.items()) + ".")
        if old:
            text += (f" No fair cost record (older results), so time and memory figures not comparable with the "
                     f"others': {', '.join(old)}.")
        out.append(Finding("time", text, {"experiments": list(walls), "not_comparable": old}))
    return out


def study_contrasts(results: dict) -> list[tuple[str, dict]]:
    """The study's contrasts on dev-matched, for the report's table and figure: each method against full
    fine-tuning, LoRA against its seed settings, one- against zero-shot, QLoRA against zero-shot prompting."""
    usable = {n: m for n, m in results.items() if accuracy(m) is not None}
    out = []
    ref = full_reference(usable)
    if ref is not None:
        out += [(f"{n} - {ref[0]}", contrast(n, m, *ref)) for n, m in usable.items() if n != ref[0]]
    for f in lora_seed_settings(usable) + _one_versus_zero_shot(usable) + _qlora_versus_prompting(usable):
        c = f.values["contrast"]
        out.append((f"{c['a']} - {c['b']}", c))
    return out


TOPICS = (
    ("summary", "Summary"), ("selection", "Model selection"), ("failure", "Failed runs"),
    ("collapse", "Collapsed runs"), ("versus_full", "Against full fine-tuning"),
    ("lora_seed", "LoRA: the seed's settings against ours"), ("sweep", "LoRA learning-rate sweep"),
    ("prompting", "The decoder LM: prompting and QLoRA"), ("time", "Cost"), ("quantization", "Memory and quantization"),
    ("per_million", "Accuracy per million trainable parameters"), ("gap", "Matched against mismatched"),
)


def compute(results: dict, failures: dict | None = None) -> list[Finding]:
    """Every finding for one profile's results (name -> metrics.json) and failures (name -> failure.json)."""
    failures = failures or {}
    usable = scored(results, failures)
    detail = failures_found(failures) + selection(usable) + collapses(usable) + versus_full(usable)
    detail += lora_seed_settings(usable) + lr_sweep(usable) + prompting(usable) + training_cost(usable)
    detail += quantization(usable) + per_million(usable) + matched_gap(usable)
    summary = summary_best(usable) + summary_lora(usable, detail)
    summary += summary_soft_prompts(usable, failures, results) + summary_llm(usable) + summary_cost(usable)
    out = summary + detail
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


def about(f: Finding) -> list[str]:
    """The experiments a finding speaks of."""
    return list(f.values.get("experiments") or []) + ([f.values["experiment"]] if f.values.get("experiment") else [])


def first(findings: list[Finding], topic: str, experiment: str | None = None) -> Finding | None:
    """The finding the method notes cite, if the results produced it."""
    return next((f for f in findings if f.topic == topic and (experiment is None or experiment in about(f))), None)
