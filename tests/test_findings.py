"""Findings are sentences generated from the numbers: check that each says what its numbers say."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import report_fixtures as rf

from nlilab.evaluation import stats
from nlilab.evaluation.metrics import COLLAPSE_MARGIN
from nlilab.report import findings as F


@pytest.fixture()
def results():
    return {k: v for k, v in rf.experiments().items() if v is not None}


@pytest.fixture()
def failures():
    return {"deep_prompts": rf.FAILURE}


def topic(found, name):
    return [f for f in found if f.topic == name]


def block_correct(m, split="validation_matched"):
    b = m[split]
    return np.asarray(b["predictions_runs"]) == np.asarray(b["labels"])


def test_summary_names_the_best_and_judges_the_others_from_paired_intervals(results, failures):
    found = F.compute(results, failures)
    best = topic(found, "summary")[0]
    usable = {n: m for n, m in F.scored(results, failures).items() if not F.collapsed(m)}
    top = max(usable, key=lambda n: usable[n]["validation_matched"]["accuracy"])
    assert best.values["experiment"] == top == "full_finetune" and best.text.startswith("Best on dev-matched")
    iv = stats.accuracy_interval(block_correct(results[top]))
    assert f"{F.pct(best.values['matched'])} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]" in best.text
    for name, c in best.values["contrasts"].items():
        if "predictions_runs" not in results[name]["validation_matched"]:
            assert c["kind"] == "none" and "older results without predictions" in best.text
            continue
        d = stats.paired_difference(block_correct(results[name]), block_correct(results[top]))
        assert c["verdict"] == stats.verdict(d) and c["diff"] == round(100 * d["diff"], 1)
        assert f"({name}) {100 * d['diff']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" in best.text
    verdicts = {c["verdict"] for c in best.values["contrasts"].values()}
    assert "lower" in verdicts and "not distinguishable on these 90 rows" in verdicts  # the fixture has both
    assert "Not distinguishable from it on these 90 rows: " in best.text and "Lower than it: " in best.text


def test_the_summary_answers_the_study_questions(results, failures):
    texts = [f.text for f in topic(F.compute(results, failures), "summary")]
    assert [t.split(":")[0] for t in texts] == ["Best on dev-matched", "LoRA's learning rate",
                                                "Soft prompts on the frozen encoder", "The decoder LM",
                                                "Cost (CPU time of training per seed, comparable whatever ran beside it)"]
    assert "deep_prompts failed" in texts[2] and "collapsed" in texts[2]
    cpu = {n: m["cost"]["train_cpu_time_s"] for n, m in results.items() if m.get("cost", {}).get("train_cpu_time_s")}
    assert f"{max(cpu.values()) / min(cpu.values()):.1f} times as much" in texts[4]


def test_a_collapsed_run_is_never_called_best(results):
    only = {"ptuning": results["ptuning"], "lora_seed": results["lora_seed"]}
    only["ptuning"] = copy.deepcopy(only["ptuning"])
    only["ptuning"]["validation_matched"]["accuracy"] = 0.99  # high, but flagged collapsed
    best = topic(F.compute(only), "summary")[0]
    assert best.values["experiment"] == "lora_seed"
    nothing = topic(F.compute({"ptuning": results["ptuning"]}), "summary")[0]
    assert "no meaningful best" in nothing.text
    assert f"more than {100 * COLLAPSE_MARGIN:g} points" in nothing.text


def test_versus_full_groups_methods_by_their_paired_verdict(results):
    found = topic(F.compute(results), "versus_full")
    named = [n for f in found for n in f.values["experiments"]]
    assert sorted(named) == sorted(set(results) - {"data", "full_finetune"})  # each method once
    full = block_correct(results["full_finetune"])
    for f in found:
        for name, c in f.values["contrasts"].items():
            if c["kind"] == "paired":
                d = stats.paired_difference(block_correct(results[name]), full)
                assert f.values["verdict"] == stats.verdict(d) == c["verdict"]
        head = {"higher": "Higher than full", "lower": "Lower than full", "not judged": "Not judged against full"}
        assert f.text.startswith(head.get(f.values["verdict"], "Not distinguishable from full fine-tuning on these"))
    # A run scored on other data than full fine-tuning says so.
    other = dict(results["zero_shot"], data_fingerprint="another0000000000")
    (f,) = topic(F.compute({"full_finetune": results["full_finetune"], "zero_shot": other}), "versus_full")
    assert f.values["other_data"] == ["zero_shot"] and "Caution: scored on other data" in f.text


def test_methods_on_different_rows_use_unpaired_intervals(results):
    shifted = copy.deepcopy(results["lora"])
    for split in ("validation_matched", "validation_mismatched"):
        shifted[split]["pair_ids"] = [f"other-{i}" for i in range(90)]
    c = F.contrast("lora", shifted, "full_finetune", results["full_finetune"])
    assert c["kind"] == "unpaired" and "on different rows, unpaired intervals" in F.contrast_text(c)
    ia, ib = stats.block_interval(shifted["validation_matched"]), F.interval(results["full_finetune"])
    assert (c["verdict"] == "not distinguishable") == stats.intervals_overlap(ia, ib)


def test_collapsed_and_failed_runs_are_named(results, failures):
    found = F.compute(results, failures)
    (summary,) = topic(found, "collapse")
    assert summary.values["collapsed"] == ["ptuning"] and "P-tuning (ptuning)" in summary.text
    assert summary.text.startswith(f"COLLAPSED (at most {100 * COLLAPSE_MARGIN:g} points")
    dist = results["ptuning"]["validation_matched"]["prediction_distribution"]
    assert F.pct(dist["entailment"] / sum(dist.values())) in summary.text and "'entailment'" in summary.text
    (failed,) = topic(found, "failure")
    assert failed.text.startswith("FAILED: deep_prompts") and "past key values" in failed.text
    # A failed experiment takes part in no comparison, even if an older metrics.json of it exists.
    stale = dict(results, deep_prompts=results["lora"])
    others = [f for f in F.compute(stale, failures) if f.topic not in ("failure", "summary")]
    assert all("deep_prompts" not in f.text for f in others)


def test_no_collapse_is_said_plainly(results):
    healthy = {n: m for n, m in results.items() if n != "ptuning"}
    (only,) = topic(F.compute(healthy), "collapse")
    assert only.text.startswith("No run collapsed") and only.values["collapsed"] == []


def test_collapse_margin_follows_its_constant(results, monkeypatch):
    monkeypatch.setattr(F, "COLLAPSE_MARGIN", 0.05)
    (only,) = topic(F.compute({n: m for n, m in results.items() if n != "ptuning"}), "collapse")
    assert "more than 5 points above" in only.text


def test_lora_at_the_seed_settings_names_every_difference(results):
    (f,) = topic(F.compute(results), "lora_seed")
    assert f.values["seed"] == "lora_seed" and f.values["recommended"] == "lora"
    d = stats.paired_difference(block_correct(results["lora"]), block_correct(results["lora_seed"]))
    assert f.values["diff"] == round(100 * d["diff"], 1) and f.values["contrast"]["verdict"] == stats.verdict(d)
    assert "learning rate 2.5e-5, r 16, alpha 32" in f.text and "learning rate 5e-4, r 8, alpha 16" in f.text
    assert f.values["differs"] == ["learning rate", "r", "alpha"]
    assert "differ in learning rate, r and alpha, so the difference is not the learning rate's alone" in f.text
    same = copy.deepcopy(results["lora_seed"])
    same["run_record"]["parameters"]["lora"] = {"r": 8, "alpha": 16}
    (g,) = topic(F.compute({"lora": results["lora"], "lora_seed": same}), "lora_seed")
    assert g.values["differs"] == ["learning rate"] and "differ only in learning rate" in g.text


def test_learning_rates_keep_their_significant_digits():
    from nlilab.methods.encoder import method_label

    assert F.rate(2.5e-5) == "2.5e-5" and F.rate(1.25e-4) == "1.25e-4" and F.rate(3e-4) == "3e-4"
    config = {"method": "lora", "lora": {"r": 8, "alpha": 16}, "train": {"learning_rate": 2.5e-5}}
    assert method_label(config) == "LoRA r=8 alpha=16, lr 2.5e-5"
    assert method_label(dict(config, sweep=True), best_value=1.5e-4).endswith("(best 1.5e-4)")


def test_the_seed_variant_is_recognised_by_its_learning_rate_or_named_neutrally(results):
    at_seed_lr = copy.deepcopy(results["lora_seed"])
    at_seed_lr["run_record"]["parameters"]["train"]["learning_rate"] = 2e-5
    renamed = {"lora_a": results["lora"], "lora_b": dict(at_seed_lr, method_label="LoRA")}
    (f,) = topic(F.compute(renamed), "lora_seed")
    assert f.values["seed"] == "lora_b" and f.values["seed_lr"] == 2e-5 and f.values["recognised"]
    # LoRA at the full fine-tuning learning rate (the seed's choice) is the seed variant, whatever that rate is.
    at_full_lr = copy.deepcopy(results["lora_seed"])
    at_full_lr["run_record"]["parameters"]["train"]["learning_rate"] = 1e-4
    found = F.compute({"full_finetune": results["full_finetune"], "lora_x": results["lora"], "lora_y": at_full_lr})
    (f,) = topic(found, "lora_seed")
    assert f.values["seed"] == "lora_y" and f.text.startswith("LoRA at the seed report's settings")
    # Two LoRA runs with neither mark: the lowest rate against the best, in neutral words.
    other = dict(copy.deepcopy(results["lora_seed"]), method_label="LoRA r=16")
    other["run_record"]["parameters"]["train"]["learning_rate"] = 3e-4
    (f,) = topic(F.compute({"lora_x": results["lora"], "lora_z": other}), "lora_seed")
    assert f.values["seed"] == "lora_z" and not f.values["recognised"]
    assert f.text.startswith("LoRA at its lowest learning rate") and "seed" not in f.text.split("(")[0]


def test_sweep_is_chosen_on_validation_and_reports_its_test_score_and_whole_cost(results):
    (f,) = topic(F.compute(results), "sweep")
    sweep = results["lora_sweep"]["sweep"]
    chosen = max(sweep["points"], key=lambda p: p["validation"]["accuracy"])
    assert f.values["best_value"] == chosen["value"] == results["lora_sweep"]["best_value"]
    assert "chose 1e-3 by validation accuracy on the held-out validation split (30 rows)" in f.text
    assert f"test score: {F.pct(chosen['validation_matched']['accuracy'])}" in f.text
    assert f"{sweep['total_cpu_time_s']:.0f} s of CPU time" in f.text and "collapsed at 3e-3" in f.text
    (sel,) = topic(F.compute(results), "selection")
    assert "lora_sweep chose the learning rate (1e-3) by validation accuracy" in sel.text
    assert "test sets, scored once per final model" in sel.text and sel.values["unrecorded"] == ["top_layers", "bare"]
    # An older sweep without validation blocks says its choice was made on a test split.
    old = copy.deepcopy(results["lora_sweep"])
    for p in old["sweep"]["points"]:
        p.pop("validation")
    old["sweep"].pop("selected_by")
    (g,) = topic(F.compute({"s": old}), "sweep")
    assert "dev-matched, a test split" in g.text


def test_accuracy_per_million_parameters_is_one_ranked_sentence(results):
    (f,) = topic(F.compute(results), "per_million")
    values = [v for _, v in f.values["ranking"]]
    assert values == sorted(values, reverse=True)
    for name, v in f.values["ranking"]:
        m = results[name]
        expected = (100 * F.accuracy(m) - 100 * F.baseline(m)) / (m["trainable_params"] / 1e6)
        assert v == pytest.approx(expected) and f"({name}) {expected:+.2f}" in f.text
    assert "zero_shot" not in f.values["experiments"]  # no trained parameters: no ratio


def test_matched_mismatched_gaps_use_unpaired_intervals(results):
    (f,) = topic(F.compute(results), "gap")
    assert "different rows, so unpaired intervals" in f.text
    for name, gap in f.values["gaps"].items():
        m = results[name]
        assert gap == round(100 * F.accuracy(m) - 100 * F.accuracy(m, "validation_mismatched"), 1)
        assert f"{name} {gap:+.1f}" in f.text
    apart = [n for n in f.values["gaps"] if F.interval(results[n]) and not stats.intervals_overlap(
        F.interval(results[n]), F.interval(results[n], "validation_mismatched"))]
    assert f.values["apart"] == apart


def test_prompting_and_qlora_are_judged_on_paired_rows(results):
    found = topic(F.compute(results), "prompting")
    pair = next(f for f in found if "one_shot" in f.values)
    d = stats.paired_difference(block_correct(results["one_shot"]), block_correct(results["zero_shot"]))
    assert pair.values["diff"] == round(100 * d["diff"], 1) and stats.verdict(d) in pair.text
    q = next(f for f in found if f.values.get("experiment") == "qlora")
    d = stats.paired_difference(block_correct(results["qlora"]), block_correct(results["zero_shot"]))
    assert q.values["contrast"]["verdict"] == stats.verdict(d) and f"{100 * d['diff']:+.1f} points" in q.text
    base = found[0]
    above = [n for n in ("zero_shot", "one_shot")
             if stats.block_interval(results[n]["validation_matched"])["low"] > F.baseline(results[n])]
    assert base.values["above"] == above and "5.0% of its answers named no label" in base.text


def test_quantization_names_the_stand_in_and_the_training_peak(results):
    (q,) = topic(F.compute(results), "quantization")
    assert q.values["ratio"] == pytest.approx(270 / 88) and "3.1 times smaller" in q.text and "as nf4" in q.text
    assert "Q4_1 GGUF file" in q.text and "16-bit copy of Q4_1-rounded weights" in q.text
    assert "640 MB" in q.text and "16-bit weights" not in q.text
    short = dict(results["qlora"], weight_footprint_mb={"4bit": 90.0, "16bit": 270.0})
    assert "3.0 times smaller" in topic(F.compute({"q": short}), "quantization")[0].text
    plain = dict(results["qlora"], weight_footprint_mb={"loaded": 540.0, "bf16": 270.0, "loaded_as": "none"},
                 quantization="none", quantization_note="bitsandbytes 4-bit needs a GPU here")
    text = topic(F.compute({"q": plain}), "quantization")[0].text
    assert "unquantized" in text and "needs a GPU" in text and "smaller" not in text


def test_cost_uses_fair_figures_and_never_compares_wall_time(results):
    fair, wall = topic(F.compute(results), "time")
    full = results["full_finetune"]["cost"]["train_cpu_time_s"]
    lora = results["lora"]["cost"]["train_cpu_time_s"]
    assert f"LoRA (lora) {lora:.0f} s CPU ({lora / full:.2f}x full fine-tuning)" in fair.text
    assert results["full_finetune"]["cost"]["how"] in fair.text
    assert "top_layers" not in fair.values["experiments"] and wall.values["not_comparable"] == ["top_layers"]
    assert "full_finetune 300 s wall (ran beside 1 other)" in wall.text and "x full" not in wall.text


def test_missing_fields_and_empty_results_do_not_break_findings(results):
    assert F.compute({}) == []
    bare = F.compute({"bare": results["bare"]})
    assert [f.topic for f in bare] == ["summary", "selection", "collapse"]
    assert F.compute({"data": results["data"]}) == []


@pytest.mark.parametrize("seed", range(10))
def test_random_results_never_contradict_their_sentences(results, seed):
    """Shuffle every accuracy: the summary still names the maximum, and each printed gap has its sign."""
    rng = random.Random(seed)
    shuffled = copy.deepcopy(results)
    for m in shuffled.values():
        for split in ("validation_matched", "validation_mismatched"):
            if split in m:
                m[split]["accuracy"] = rng.choice([rng.random(), 0.5])  # ties happen
        if "collapsed" in m:
            m["collapsed"] = rng.random() < 0.2
    found = F.compute(shuffled)
    usable = {n: m for n, m in F.scored(shuffled).items() if not F.collapsed(m)}
    best = topic(found, "summary")[0]
    if usable:
        assert F.accuracy(usable[best.values["experiment"]]) == max(F.accuracy(m) for m in usable.values())
    for f in topic(found, "gap"):
        for name, gap in f.values["gaps"].items():
            m = shuffled[name]
            assert gap == round(100 * F.accuracy(m) - 100 * F.accuracy(m, "validation_mismatched"), 1)


def test_one_shot_is_compared_with_the_zero_shot_run_of_its_own_prompt(results):
    """A zero-shot run with another prompt (or calibration) must not stand in for the one-shot run's baseline."""
    harness = {"name": "harness_mnli", "version": 1}
    runs = {"one_shot": dict(results["one_shot"], prompt=harness, calibration="none"),
            "zero_shot_chat": dict(results["zero_shot"], prompt={"name": "instruct_chat", "version": 1},
                                   calibration="contextual")}
    assert not [f for f in topic(F.compute(runs), "prompting") if "one_shot" in f.values]
    runs["zero_shot"] = dict(results["zero_shot"], prompt=harness, calibration="none")
    (pair,) = [f for f in topic(F.compute(runs), "prompting") if "one_shot" in f.values]
    assert pair.values["zero_shot"] == "zero_shot" and "same prompt (zero_shot" in pair.text


def test_notes_compute_or_cite_their_figures(results):
    from nlilab.report import notes
    from nlilab.report.references import ADAPTER_LR_RANGE, FULL_FT_LR_RANGE

    text = " ".join(" ".join(p) for _, p in notes.all_notes(results, F.compute(results)))
    assert "fourfold" not in text and "twenty-five" not in text
    lo, hi = ADAPTER_LR_RANGE[0] / FULL_FT_LR_RANGE[1], ADAPTER_LR_RANGE[1] / FULL_FT_LR_RANGE[0]
    assert f"{lo:.0f} to {hi:.0f} times more" in text
    assert "Q4_1" in text and "16-bit copy of Q4_1-rounded weights" in text
