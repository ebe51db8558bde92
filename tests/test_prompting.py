"""Prompting: prompts as data, demonstrations, the fast log-likelihood scorer against the plain one, answer
parsing, and the metrics an experiment writes. Model tests use the embedded SmolLM2 on a handful of rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nlilab import LABELS, params
from nlilab.errors import ParamsError
from nlilab.experiments import prompting
from nlilab.prompting import demos, generation, prompts, scoring

BUNDLED = {"source": "bundled", "local_dir": None, "hub_id": "nyu-mll/multi_nli", "train_limit": None,
           "eval_limit": 6}


# ------------------------------------------------------------------------------------------------ templates
def test_harness_template_renders_exactly():
    prompt = prompts.load_prompt("harness_mnli")
    assert prompt.label_words == (" True", " Neither", " False")
    # The harness strips the hypothesis and ends it with '.'; the premise is left as it is.
    assert prompts.build_context(prompt, "A man sleeps.", "  A person rests ") == \
        "A man sleeps.\nQuestion: A person rests. True, False or Neither?\nAnswer:"
    assert prompts.fill(prompt, "P", "H.") == "P\nQuestion: H. True, False or Neither?\nAnswer:"
    demo = {"premise": "It rains.", "hypothesis": "It is dry", "label": 2}
    assert prompts.build_context(prompt, "A man sleeps.", "A person rests.", [demo]) == (
        "It rains.\nQuestion: It is dry. True, False or Neither?\nAnswer: False\n\n"
        "A man sleeps.\nQuestion: A person rests. True, False or Neither?\nAnswer:")


def test_prompt_files_are_valid_and_versioned():
    assert {"harness_mnli", "instruct_chat"} <= set(prompts.available_prompts())
    for name in prompts.available_prompts():
        record = prompts.load_prompt(name).record()
        assert record["version"] >= 1 and len(record["template_sha256"]) == 64
        assert set(record["label_words"]) == set(LABELS)


def test_overrides_apply_and_change_the_hash():
    base = prompts.load_prompt("harness_mnli")
    changed = prompts.load_prompt("harness_mnli", {"label_words": {"neutral": " Maybe"}, "version": 1})
    assert changed.label_words == (" True", " Maybe", " False")
    assert changed.record()["template_sha256"] != base.record()["template_sha256"]


@pytest.mark.parametrize("overrides, words", [
    ({"template": "{premise} {hypothesis} {answer}"}, "unknown placeholder"),
    ({"template": "{premise} only"}, "missing placeholder"),
    ({"version": 99}, "expects version 99"),
    ({"label_words": {"neutral": " True"}}, "must differ"),
])
def test_bad_prompt_overrides_are_named(overrides, words):
    with pytest.raises(ParamsError, match=words):
        prompts.load_prompt("harness_mnli", overrides)


def test_unknown_prompt_lists_the_shipped_ones():
    with pytest.raises(ParamsError, match="harness_mnli"):
        prompts.load_prompt("no_such_prompt")


# ----------------------------------------------------------------------------------------- demonstrations
@pytest.fixture(scope="module")
def bundled():
    from nlilab.data.nli import load_nli

    return load_nli(BUNDLED, seed=0)


def test_demonstrations_come_from_train_only(bundled):
    eval_ids = {pid for split in ("validation_matched", "validation_mismatched")
                for pid in bundled[split]["pairID"]}
    train_ids = set(bundled["train"]["pairID"])
    for seed in range(5):
        plan = demos.choose_demos(bundled["train"], seed, 1, rotate=True, exclude_ids=eval_ids)
        assert all(row["pairID"] in train_ids and row["pairID"] not in eval_ids for row in plan.rows)
    # The guard: rows listed as evaluated are never drawn, even when they sit in the train split.
    some = list(train_ids)[:-3]
    plan = demos.choose_demos(bundled["train"], 0, 1, rotate=False, exclude_ids=some)
    assert plan.rows[0]["pairID"] not in some


def test_rotation_balances_demonstration_labels(bundled):
    plan = demos.choose_demos(bundled["train"], 4, 1, rotate=True)
    shown = [plan.for_example(i)[0]["label"] for i in range(30)]
    assert np.bincount(shown, minlength=3).tolist() == [10, 10, 10]
    fixed = demos.choose_demos(bundled["train"], 4, 1, rotate=False)
    assert len({fixed.for_example(i)[0]["pairID"] for i in range(30)}) == 1
    # Each group's demonstrations are those its examples see (content-free calibration relies on it).
    assert all(plan.groups()[plan.group(i)] == plan.for_example(i) for i in range(30))
    zero = demos.choose_demos(bundled["train"], 4, 0, rotate=True)
    assert zero.groups() == [[]] and zero.for_example(7) == [] and zero.group(7) == 0
    draws = {demos.choose_demos(bundled["train"], s, 1, rotate=False).rows[0]["pairID"] for s in range(6)}
    assert len(draws) > 1, "the seed must choose the demonstration"


# ----------------------------------------------------------------------------------- answers and metrics
@pytest.mark.parametrize("text, label", [
    (" True", 0), ("Neither.", 1), ("false, because", 2), ("I would say yes", 0),
    ("Contradiction", 2), ("not sure", -1), ("", -1), ("nothing", -1), ("True or False", 0),
])
def test_parse_answer(text, label):
    assert generation.parse_answer(text, prompts.load_prompt("harness_mnli")) == label


def test_unmatched_answers_count_as_wrong_and_are_shown():
    out = generation.score_with_unmatched([0, 1, 2, 0], [0, -1, 2, 1], ["a", "a", "b", "b"])
    assert out["accuracy"] == 0.5 and out["unmatched_share"] == 0.25
    assert out["prediction_distribution"] == {"entailment": 1, "neutral": 1, "contradiction": 1, "unmatched": 1}
    assert sum(map(sum, out["confusion"])) == 3 and out["unmatched_by_gold"]["neutral"] == 1
    assert out["per_genre"] == {"a": 0.5, "b": 0.5}


def test_contextual_calibration_removes_a_constant_bias():
    bias = np.array([0.7, 0.2, 0.1])
    scores = np.log(np.array([[0.5, 0.4, 0.1], [0.6, 0.1, 0.3]]))
    assert scores.argmax(1).tolist() == [0, 0]
    assert scoring.calibrate(scores, bias).argmax(1).tolist() == [1, 2]
    assert np.allclose(scoring.content_free_bias(np.log([[2, 1, 1], [1, 1, 2]])), [0.375, 0.25, 0.375])


# ------------------------------------------------------------------------------------------ the scorer
@pytest.fixture(scope="module")
def smollm2():
    from nlilab.models.resolve import resolve_model

    return prompting.load_model(resolve_model("smollm2").path, {"precision": "fp32"}, "cpu")


def _requests(bundled, tokenizer, name, shots, rows=3):
    prompt = prompts.load_prompt(name)
    ds = bundled["validation_matched"].select(range(rows))
    plan = demos.choose_demos(bundled["train"], 1, shots, rotate=False)  # one demonstration: a shared prefix
    contexts = [prompts.build_context(prompt, p, h, plan.for_example(i), tokenizer)
                for i, (p, h) in enumerate(zip(ds["premise"], ds["hypothesis"]))]
    return scoring.encode_requests(tokenizer, contexts, prompt.label_words, prompt.add_special_tokens, 2048,
                                     [plan.group(i) for i in range(rows)])


@pytest.mark.parametrize("name, shots", [("harness_mnli", 0), ("harness_mnli", 1), ("instruct_chat", 0)])
def test_fast_scoring_equals_one_pass_per_label(smollm2, bundled, name, shots):
    tokenizer, model = smollm2
    requests = _requests(bundled, tokenizer, name, shots)
    scorer = scoring.LoglikScorer(model, batch_size=3, progress=False)
    fast = scorer.score(requests)
    reference = scoring.reference_loglikelihoods(model, requests)
    assert np.allclose(fast, reference, atol=2e-3), np.abs(fast - reference).max()
    assert (fast.argmax(1) == reference.argmax(1)).all()
    if name == "harness_mnli":  # one token per label word: one forward pass per batch, no branches
        assert all(len(c) == 1 for r in requests for c in r.continuations)
    else:  # "entailment" is several tokens: scored as branches
        assert any(len(c) > 1 for r in requests for c in r.continuations)
    if shots or name == "instruct_chat":  # the demonstration or the system message is computed once
        assert scorer.stats["shared_prefix_tokens"] >= prompts.MIN_SHARED_PREFIX


def test_continuations_follow_the_harness_split():
    class Toy:  # a character-level tokenizer that fuses " T" into one token, as BPE fuses a space and a word
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[ord(c) for c in t.replace(" T", "\x01")] for t in texts]}

    reqs = scoring.encode_requests(Toy(), ["Answer: "], ("Tx", " N", " F"))
    # The trailing space moves to the continuation, so it fuses with the label word as in running text.
    assert reqs[0].context == [ord(c) for c in "Answer:"]
    assert reqs[0].continuations[0] == [1, ord("x")]
    assert reqs[0].continuations[1] == [ord(" "), ord(" "), ord("N")]


# --------------------------------------------------------------------------------------- an experiment
def _config(tmp_path, **block):
    prof = params.load_profile("tiny")
    name = next(n for n, c in prof.experiments.items() if c["kind"] == "prompting")
    config = params.with_output_dirs(prof, name, results_dir=tmp_path / "results", reports_dir=tmp_path / "r")
    config["data"]["eval_limit"] = 3
    config.update(block)
    return config


def test_experiment_metrics_fields(tmp_path):
    config = _config(tmp_path, mode="one_shot", seeds=[0, 1], calibration="contextual", rotate_demo_labels=False)
    prompting.run(config)
    written = json.loads((Path(config["output_dir"]) / "metrics.json").read_text())
    for key in ("validation_matched", "validation_mismatched", "majority_baseline", "prompt", "mode",
                "method", "method_label", "examples_per_second", "cpu_rss_peak_mb", "trainable_params"):
        assert key in written, key
    assert written["trainable_params"] == 0 and written["mode"] == "one_shot"
    assert written["prompt"]["version"] >= 1 and written["prompt"]["rendered_sha256"]
    assert written["method_label"].startswith("one-shot")
    matched = written["validation_matched"]
    assert sum(matched["prediction_distribution"][label] for label in LABELS) == 2 * 3
    assert len(matched["accuracy_runs"]) == 2 and "per_genre" in matched
    for run in written["runs"]:
        assert run["demonstrations"] and run["content_free_bias"]


def test_generation_mode_reports_unmatched_share(tmp_path):
    metrics = prompting.run(_config(tmp_path, scoring="generate", max_new_tokens=3))
    # unmatched answers are recorded as -1 in each split's predictions: the shares follow from them
    shares = [np.mean(np.asarray(r[s]["predictions"]) == -1) for r in metrics["runs"]
              for s in ("validation_matched", "validation_mismatched")]
    assert metrics["scoring"] == "generate" and metrics["unmatched_share"] == pytest.approx(np.mean(shares))
    unmatched = int(np.sum(np.asarray(metrics["runs"][0]["validation_matched"]["predictions"]) == -1))
    assert metrics["validation_matched"]["prediction_distribution"]["unmatched"] == unmatched
    assert "unmatched" in metrics["validation_matched"]["prediction_distribution"]
    assert metrics["runs"][0]["validation_matched"]["answers_sample"]
