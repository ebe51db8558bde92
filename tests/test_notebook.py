"""nlilab.notebook, what a method notebook shows of a run, on the synthetic metrics of tests/report_fixtures.py
(every kind: encoder, sweep, prompting, QLoRA, collapsed, old-style); and the committed notebooks that call it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import report_fixtures as rf
from IPython.display import Image

from nlilab import EVAL_SPLITS, notebook
from nlilab.evaluation import stats
from nlilab.run.cache import notebook_modules

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PNG = b"\x89PNG"


@pytest.fixture
def shown(monkeypatch):
    """What the functions display, in order (IPython's display is replaced; prints go to capsys)."""
    out = []
    monkeypatch.setattr(notebook, "display", lambda obj: out.append(obj))
    return out


@pytest.fixture(scope="module")
def results():
    """The fixture metrics with each split's interval, as the drivers store it (aggregate_split)."""
    out = {k: v for k, v in rf.experiments().items() if v}
    for m in out.values():
        for split in ("validation", *EVAL_SPLITS):
            if isinstance(m.get(split), dict) and "predictions_runs" in m[split]:
                m[split]["interval"] = stats.block_interval(m[split])
    return out


def frames(objs):
    return [o for o in objs if isinstance(o, pd.DataFrame)]


def images(objs):
    return [o for o in objs if isinstance(o, Image)]


# ------------------------------------------------------------------------------------------------ scores
def test_scores_show_the_accuracy_with_its_interval_and_the_baseline(results, shown, capsys):
    m = results["full_finetune"]
    notebook.scores(m)
    (table,) = frames(shown)
    assert list(table.index) == ["validation", *EVAL_SPLITS]
    for split in EVAL_SPLITS:
        row = table.loc[split]
        assert row["accuracy"] == pytest.approx(m[split]["accuracy"])
        assert (row["ci95_low"], row["ci95_high"]) == (m[split]["interval"]["low"], m[split]["interval"]["high"])
        assert row["ci95_low"] < row["accuracy"] < row["ci95_high"]
        assert row["accuracy_std"] == pytest.approx(m[split]["accuracy_std"]) and row["accuracy_std"] > 0
        assert row["majority_baseline"] == pytest.approx(rf.BASELINE)
    assert table.loc["validation", "role"] == "selection" and table.loc["validation_matched", "role"] == "test"
    assert "WARNING" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["full_finetune", "lora", "top_layers", "zero_shot", "one_shot", "qlora"])
def test_no_collapse_warning_for_a_run_that_learned(results, shown, capsys, name):
    notebook.scores(results[name])
    assert "WARNING" not in capsys.readouterr().out
    assert notebook.collapse_warning(results[name]) is None


def test_collapse_warning_names_the_margin_the_splits_and_what_it_means(results, shown, capsys):
    m = results["ptuning"]  # stuck on 'entailment': 31 of 90, the majority class's own share
    notebook.scores(m, if_collapsed="the model is not reading the pairs")
    out = capsys.readouterr().out
    assert out.startswith("WARNING: accuracy is within 2 points of the majority class (")
    for split in EVAL_SPLITS:
        assert f"{split} {100 * m[split]['accuracy']:.1f}% against {100 * rf.BASELINE:.1f}%" in out
    assert out.rstrip().endswith(": the model is not reading the pairs.")
    assert len(frames(shown)) == 1, "the table follows the warning"
    default = notebook.collapse_warning(m)
    assert "it learned next to nothing" in default


def test_collapse_margin_is_formatted_from_the_constant(results, monkeypatch):
    monkeypatch.setattr(notebook, "COLLAPSE_MARGIN", 0.05)
    assert "within 5 points of the majority class" in notebook.collapse_warning(results["ptuning"])


def test_the_flag_decides_and_numbers_stand_in_only_without_it(results):
    stuck = {k: v for k, v in results["ptuning"].items() if k != "collapsed"}
    assert notebook.collapse_warning(stuck), "an older dict without the flag: recomputed from the numbers"
    assert notebook.collapse_warning({**stuck, "collapsed": False}) is None, "the run's own flag wins"
    flagged = notebook.collapse_warning({**results["lora"], "collapsed": True})
    assert flagged and "against" not in flagged, "flagged, yet no split within the margin: no numbers to give"


# ------------------------------------------------------------------------------------------------ costs
def test_costs_show_the_fair_cost_record_and_the_method_notes(results, shown):
    m = {**results["lora"], "method_notes": {"adapter_params": 147_456, "head_params": 2_307}}
    notebook.costs(m)
    table, notes = shown
    row = table.iloc[0]
    assert row["trainable_params"] == m["trainable_params"] and row["total_params"] == m["total_params"]
    assert row["train_cpu_time_s"] == m["cost"]["train_cpu_time_s"]
    assert row["window_per_second"] == m["cost"]["window"]["samples_per_second"]
    assert notes == m["method_notes"]


def test_costs_of_prompting_add_the_asked_fields_and_no_notes(results, shown):
    m = results["one_shot"]
    notebook.costs(m, "examples_per_second", "unmatched_share")
    (table,) = shown
    row = table.iloc[0]
    assert row["window_per_second"] == m["cost"]["window"]["examples_per_second"]
    assert (row["examples_per_second"], row["unmatched_share"]) == (m["examples_per_second"], m["unmatched_share"])
    assert row["trainable_params"] == 0


# ------------------------------------------------------------------------------------------------ history, errors
def test_history_shows_the_epochs_and_their_curves(results, shown):
    m = results["full_finetune"]
    notebook.history(m)
    table = frames(shown)[0]
    assert list(table.index) == [1.0, 2.0, 3.0]
    assert list(table["accuracy"]) == pytest.approx([row["accuracy"] for row in m["history"]])
    (image,) = images(shown)
    assert image.data.startswith(PNG)


def test_history_of_a_run_without_training_says_so(results, shown, capsys):
    notebook.history(results["zero_shot"])
    assert shown == [] and "no per-epoch history" in capsys.readouterr().out


def test_errors_show_confusions_prediction_counts_and_genres(results, shown, capsys):
    m = results["ptuning"]
    notebook.errors(m)
    (image,) = images(shown)
    assert image.data.startswith(PNG)
    out = capsys.readouterr().out
    for split in EVAL_SPLITS:
        counts = m[split]["prediction_distribution"]
        assert f"{split} predictions: " + ", ".join(f"{k} {v}" for k, v in counts.items()) in out
    (genres,) = frames(shown)
    for split in EVAL_SPLITS:
        for genre, acc in m[split]["per_genre"].items():
            assert genres.loc[(split, genre), "accuracy"] == pytest.approx(acc)


def test_show_displays_a_png_and_closes_the_figure(shown):
    import matplotlib.pyplot as plt

    from nlilab.report import plots

    fig = plots.confusion_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "x")
    notebook.show(fig)
    (image,) = shown
    assert image.data.startswith(PNG) and not plt.fignum_exists(fig.number)


# ------------------------------------------------------------------------------------------------ describe
def test_describe_prints_what_runs_and_shows_the_named_blocks(shown, capsys):
    cfg = {"model": "minilm", "method": "lora", "seed": 0, "seeds": [0, 1], "lora": {"r": 8}, "train": {"lr": 1}}
    notebook.describe(cfg, "lora", "train", label="LoRA r=8", note="a note")
    assert capsys.readouterr().out == ("model: minilm   method: lora (LoRA r=8)   seeds: [0, 1]\n"
                                       "NOTE: a note\n")
    assert shown == [{"lora": {"r": 8}, "train": {"lr": 1}}]


def test_describe_takes_the_methods_facts_and_seeds(shown, capsys):
    cfg = {"model": "smollm2", "mode": "zero_shot", "seed": 3, "seeds": [0, 1]}
    notebook.describe(cfg, mode="zero_shot", scoring="loglik", seeds=[3])
    assert capsys.readouterr().out == "model: smollm2   mode: zero_shot   scoring: loglik   seeds: [3]\n"
    assert shown == []


# ------------------------------------------------------------------------------------------------ the notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_call_the_module_and_carry_no_outputs(path):
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    assert text == json.dumps(nb, indent=1, ensure_ascii=False) + "\n" and nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c for c in code if "parameters" in c["metadata"].get("tags", [])] == code[:1]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    source = "\n".join("".join(c["source"]) for c in code)
    called = set(re.findall(r"\bnotebook\.(\w+)\(", source))
    assert called and all(callable(getattr(notebook, name, None)) for name in called), called
    assert "COLLAPSE_MARGIN" not in source, "the collapse warning is notebook.scores' job"
    # the runner's cache key must follow the module, or an edit to it would not rerun the notebook
    assert "notebook" in notebook_modules(path)
