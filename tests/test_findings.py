"""Findings are sentences generated from the numbers: check that each says what its numbers say."""

from __future__ import annotations

import copy
import random
import re

import pytest

import report_fixtures as rf
from nlilab import findings as F


@pytest.fixture()
def results():
    return {k: v for k, v in rf.experiments().items() if v is not None}


@pytest.fixture()
def failures():
    return {"deep_prompts": rf.FAILURE}


def topic(found, name):
    return [f for f in found if f.topic == name]


def test_best_is_the_most_accurate_run_that_did_not_collapse(results, failures):
    found = F.compute(results, failures)
    (best,) = topic(found, "best")
    usable = {n: m for n, m in F.scored(results, failures).items() if not F.collapsed(m)}
    top = max(usable, key=lambda n: usable[n]["validation_matched"]["accuracy"])
    assert best.values["experiment"] == top == "full_finetune"
    assert f"({top})" in best.text and F.pct(best.values["matched"]) in best.text
    # The runner-up gap is printed with the number it was computed from, and compared with the seed spread.
    assert f"{best.values['behind']:.1f} points behind" in best.text
    assert ("within" in best.text) == (best.values["behind"] <= 100 * best.values["seed_spread"])


def test_a_tie_for_best_is_called_a_tie(results):
    twin = dict(results["full_finetune"], experiment="twin")
    (best,) = topic(F.compute({"full_finetune": results["full_finetune"], "twin": twin}), "best")
    assert best.values["behind"] == 0 and "ties with it" in best.text and "behind" not in best.text


def test_a_collapsed_run_is_never_called_best(results):
    only = {"ptuning": results["ptuning"], "lora_seed": results["lora_seed"]}
    only["ptuning"] = copy.deepcopy(only["ptuning"])
    only["ptuning"]["validation_matched"]["accuracy"] = 0.99  # high, but flagged collapsed
    (best,) = topic(F.compute(only), "best")
    assert best.values["experiment"] == "lora_seed"
    (nothing,) = topic(F.compute({"ptuning": results["ptuning"]}), "best")
    assert "no meaningful best" in nothing.text


def test_versus_full_fine_tuning_words_follow_the_sign(results):
    found = topic(F.compute(results), "versus_full")
    full = results["full_finetune"]["validation_matched"]["accuracy"]
    assert {f.values["experiment"] for f in found} == set(results) - {"data", "full_finetune"}
    for f in found:
        acc = F.accuracy(results[f.values["experiment"]])
        assert f.values["diff"] == round(100 * acc - 100 * full, 1)
        word = "gains" if f.values["diff"] > 0 else "loses" if f.values["diff"] < 0 else "ties"
        assert f" {word} " in f.text, f.text
        if f.values["diff"]:
            assert f"{abs(f.values['diff']):.1f} points" in f.text
        ratio = f.values.get("trainable_ratio")
        if ratio and ratio >= 1.5:
            assert f"training {ratio:.0f} times fewer parameters" in f.text
    zero = next(f for f in found if f.values["experiment"] == "zero_shot")
    assert "no parameters" in zero.text and "caution" not in zero.text
    # A run scored on other data than full fine-tuning says so.
    other = dict(results["zero_shot"], data_fingerprint="another0000000000")
    (f,) = topic(F.compute({"full_finetune": results["full_finetune"], "zero_shot": other}), "versus_full")
    assert f.values["same_data"] is False and "caution: scored on other data" in f.text


def test_collapsed_and_failed_runs_are_named(results, failures):
    found = F.compute(results, failures)
    summary, detail = topic(found, "collapse")
    assert summary.values["collapsed"] == ["ptuning"] and "ptuning" in summary.text
    assert detail.text.startswith("COLLAPSED: P-tuning (ptuning)")
    dist = results["ptuning"]["validation_matched"]["prediction_distribution"]
    assert F.pct(dist["entailment"] / sum(dist.values())) in detail.text and "'entailment'" in detail.text
    (failed,) = topic(found, "failure")
    assert failed.text.startswith("FAILED: deep_prompts") and "past key values" in failed.text
    # A failed experiment takes part in no comparison, even if an older metrics.json of it exists.
    stale = dict(results, deep_prompts=results["lora"])
    others = [f for f in F.compute(stale, failures) if f.topic != "failure"]
    assert all("deep_prompts" not in f.text for f in others)


def test_no_collapse_is_said_plainly(results):
    healthy = {n: m for n, m in results.items() if n != "ptuning"}
    (only,) = topic(F.compute(healthy), "collapse")
    assert only.text.startswith("No run collapsed") and only.values["collapsed"] == []


def test_lora_at_the_seed_settings_against_the_recommended_one(results):
    (f,) = topic(F.compute(results), "lora_seed")
    assert f.values["seed"] == "lora_seed" and f.values["recommended"] == "lora"
    expected = round(100 * F.accuracy(results["lora"]) - 100 * F.accuracy(results["lora_seed"]), 1)
    assert f.values["diff"] == expected > 0
    assert f"{expected:.1f} points more" in f.text and "learning rate 2e-5" in f.text and "5e-4" in f.text


def test_the_seed_variant_is_recognised_by_its_learning_rate_or_named_neutrally(results):
    renamed = {"lora_a": results["lora"], "lora_b": dict(results["lora_seed"], method_label="LoRA")}
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


def test_sweep_names_its_best_and_collapsed_values(results):
    (f,) = topic(F.compute(results), "sweep")
    points = results["lora_sweep"]["sweep"]["points"]
    best = max(points, key=lambda p: p["validation_matched"]["accuracy"])
    assert f.values["best_value"] == best["value"] == 1e-3
    assert "1e-3 is best" in f.text and f.values["collapsed_values"] == [3e-3] and "collapsed at 3e-3" in f.text


def test_accuracy_per_million_parameters_is_computed_and_ranked(results):
    found = topic(F.compute(results), "per_million")
    values = [f.values["per_million"] for f in found]
    assert values == sorted(values, reverse=True)
    for f in found:
        m = results[f.values["experiment"]]
        expected = 100 * F.accuracy(m) / (m["trainable_params"] / 1e6)
        assert f.values["per_million"] == pytest.approx(expected)
        assert f"{expected:.2f} accuracy points per million" in f.text
    assert "zero_shot" not in {f.values["experiment"] for f in found}  # no trained parameters: no ratio


def test_matched_mismatched_gap_direction(results):
    for f in topic(F.compute(results), "gap"):
        gap = f.values["gap"]
        assert gap == round(100 * f.values["matched"] - 100 * f.values["mismatched"], 1)
        if gap > 0:
            assert "higher on dev-matched" in f.text
        elif gap < 0:
            assert "higher on dev-mismatched" in f.text
        else:
            assert "the same on both" in f.text


def test_prompting_quantization_and_time(results):
    found = F.compute(results)
    shots = topic(found, "prompting")[-1]
    one, zero = F.accuracy(results["one_shot"]), F.accuracy(results["zero_shot"])
    assert shots.values["diff"] == round(100 * one - 100 * zero, 1)
    assert f"{abs(shots.values['diff']):.1f} points above zero-shot" in shots.text
    (q,) = topic(found, "quantization")
    assert q.values["ratio"] == pytest.approx(270 / 88) and "3.1 times smaller" in q.text and "as nf4" in q.text
    # The shorter footprint record, and a run that fell back to unquantized weights, read as well.
    short = dict(results["qlora"], weight_footprint_mb={"4bit": 90.0, "16bit": 270.0})
    assert "3.0 times smaller" in topic(F.compute({"q": short}), "quantization")[0].text
    assert "embedding table" not in q.text
    tables = dict(results["qlora"], weight_footprint_mb={**results["qlora"]["weight_footprint_mb"], "embeddings_4bit": True})
    assert "(linear layers and embedding table) as nf4" in topic(F.compute({"q": tables}), "quantization")[0].text
    plain = dict(results["qlora"], weight_footprint_mb={"loaded": 540.0, "bf16": 270.0, "loaded_as": "none"},
                 quantization="none", quantization_note="bitsandbytes 4-bit needs a GPU here")
    text = topic(F.compute({"q": plain}), "quantization")[0].text
    assert "unquantized" in text and "needs a GPU" in text and "smaller" not in text
    lora_time = next(f for f in topic(found, "time") if f.values["experiment"] == "lora")
    assert "0.67 times" in lora_time.text and "(300 s)" in lora_time.text


def test_missing_fields_and_empty_results_do_not_break_findings(results):
    assert F.compute({}) == []
    bare = F.compute({"bare": results["bare"]})
    assert [f.topic for f in bare] == ["best", "collapse"]
    assert F.compute({"data": results["data"]}) == []


@pytest.mark.parametrize("seed", range(25))
def test_random_results_never_contradict_their_sentences(results, seed):
    """Shuffle every accuracy: the best sentence still names the maximum and every comparison word follows the
    sign of the printed difference."""
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
    best = topic(found, "best")[0]
    if usable:
        top = max(F.accuracy(m) for m in usable.values())
        assert F.accuracy(usable[best.values["experiment"]]) == top
    for f in topic(found, "versus_full"):
        if "diff" not in f.values:
            continue
        d = f.values["diff"]
        assert (" gains " in f.text) == (d > 0) and (" loses " in f.text) == (d < 0)
        assert (" ties " in f.text) == (d == 0)
    for f in topic(found, "gap"):
        printed = re.search(r"is (\d+\.\d) points higher on dev-(\w+)", f.text)
        if printed:
            assert float(printed.group(1)) == abs(f.values["gap"])
            assert printed.group(2) == ("matched" if f.values["gap"] > 0 else "mismatched")


def test_one_shot_is_compared_with_the_zero_shot_run_of_its_own_prompt(results):
    """A zero-shot run with another prompt (or calibration) must not stand in for the one-shot run's baseline."""
    harness = {"name": "harness_mnli", "version": 1}
    runs = {"one_shot": dict(results["one_shot"], prompt=harness, calibration="none"),
            "zero_shot_chat": dict(results["zero_shot"], prompt={"name": "instruct_chat", "version": 1},
                                   calibration="contextual")}
    assert not [f for f in topic(F.compute(runs), "prompting") if "one_shot" in f.values]
    runs["zero_shot"] = dict(results["zero_shot"], prompt=harness, calibration="none")
    (pair,) = [f for f in topic(F.compute(runs), "prompting") if "one_shot" in f.values]
    assert pair.values["zero_shot"] == "zero_shot" and "same prompt (zero_shot)" in pair.text
