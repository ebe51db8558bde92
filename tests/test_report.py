"""The comparison report from synthetic results of every kind: true to the numbers, failures and collapses
impossible to miss, every optional field allowed to be missing, and nothing loaded from the network."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import report_fixtures as rf

from nlilab.cli import main
from nlilab.evaluation import stats
from nlilab.params import load_profile
from nlilab.report import build, pages, sections
from nlilab.report import findings as F
from nlilab.report.html import pct
from nlilab.report.references import PUBLISHED, SEED_REPORT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results_dir, reports_dir, metrics = rf.write(root)
    page = build.build_report(rf.profile(root), results_dir, reports_dir)
    return page, page.read_text(encoding="utf-8"), metrics


class Resources(HTMLParser):
    """Every attribute that makes a browser fetch something, and every link, with its tag."""

    FETCHING = {"src", "srcset", "data", "poster", "action", "formaction", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.fetches, self.links, self.rows = [], [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.FETCHING or (name == "href" and tag != "a"):
                self.fetches.append((tag, name, value or ""))
            elif name == "href":
                self.links.append(value or "")


def remote_problems(text: str) -> list[str]:
    """Remote addresses a browser would load: only <a href> may point to the web (citations)."""
    parser = Resources()
    parser.feed(text)
    bad = [f"<{t} {n}={v[:80]}>" for t, n, v in parser.fetches if re.match(r"\s*(https?:)?//", v)]
    bad += re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]{0,80}", text)
    bad += re.findall(r"@import\s+['\"]?(?:url\()?\s*['\"]?(?:https?:)?//[^;]{0,80}", text)
    bad += re.findall(r"import\(\s*['\"](?:https?:)?//[^)]{0,80}", text)
    return bad


def rows_of(page: str) -> dict[str, str]:
    """The results table's rows by experiment name (the row's HTML)."""
    table = page.split('id="results"')[1].split("</table>")[0]
    return {re.sub(r"<[^>]+>", "", row.split(">", 1)[1].split("</td>")[0]).strip(): row
            for row in table.split("<tr")[2:]}


def test_every_experiment_has_a_row_with_its_measured_accuracy(built):
    _, page, metrics = built
    rows = rows_of(page)
    assert set(rows) == set(rf.NOTEBOOKS) - {"data"}
    for name, m in metrics.items():
        if m["kind"] == "data":
            continue
        assert pct(m["validation_matched"]["accuracy"]) in rows[name], name
        if "validation_mismatched" in m:
            assert pct(m["validation_mismatched"]["accuracy"]) in rows[name], name
    full = metrics["full_finetune"]["validation_matched"]
    correct = np.asarray(full["predictions_runs"]) == np.asarray(full["labels"])
    iv = stats.accuracy_interval(correct)  # the interval, from the predictions the fixture wrote
    assert f"{pct(full['accuracy'])} [{pct(iv['low'])}, {pct(iv['high'])}]" in rows["full_finetune"]
    old = metrics["top_layers"]["validation_matched"]  # an old-style file: no interval, mean as before
    assert f">{pct(old['accuracy'])}</td>" in rows["top_layers"] and "[" not in rows["top_layers"]
    assert "22,714,371 (100%)" in rows["full_finetune"]
    assert "520 s CPU; 0:05:00 wall (ran beside 1 other)" in rows["full_finetune"]  # fair time, then wall
    assert "0:02:30 wall (not comparable)" in rows["top_layers"]
    assert "whole sweep 960 s CPU, 0:12:40 wall" in rows["lora_sweep"]
    assert "9.5 scored ex/s (exclusive window)" in rows["zero_shot"] and "NF4" in rows["qlora"]
    assert "RAM 2100 (per-seed peak), training peak 640" in rows["qlora"]


def test_failed_collapsed_and_missing_runs_are_marked_in_words(built):
    _, page, _ = built
    rows = rows_of(page)
    assert 'class="failed"' in rows["deep_prompts"] and "FAILED" in rows["deep_prompts"]
    assert 'class="collapsed"' in rows["ptuning"] and "COLLAPSED" in rows["ptuning"]
    assert "not run" in rows["never_run"]
    assert all("FAILED" not in r and "COLLAPSED" not in r for n, r in rows.items()
               if n not in ("deep_prompts", "ptuning"))
    top = page.split('id="results"')[0]  # the banners above the first table
    assert "FAILED: deep_prompts" in top and "Model does not support past key values" in top
    assert "COLLAPSED: ptuning" in top and "never_run" in top


def test_every_finding_is_printed_and_nothing_else_claims_a_best(built):
    page_path, page, metrics = built
    results = {k: v for k, v in metrics.items()}
    found = F.compute(results, {"deep_prompts": rf.FAILURE})
    assert {f.topic for f in found} >= {"summary", "selection", "versus_full", "lora_seed", "sweep", "prompting",
                                        "time", "quantization", "collapse", "failure"}
    for f in found:
        assert html.escape(f.text) in page, f.text
    assert page.count("Best on dev-matched") == 1


def test_plots_are_embedded_pngs(built):
    _, page, _ = built
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    alts = [alt for alt, _ in images]
    for expected in ("paired differences", "learning curves", "accuracy against trainable parameters", "accuracy against training time",
                     "confusion matrices validation_matched", "confusion matrices validation_mismatched",
                     "accuracy per genre", "learning-rate sweep lora_sweep", "prompting prediction distribution"):
        assert expected in alts
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("<img") == len(images)  # no image from anywhere else
    assert "could not be drawn" not in page


def test_seed_and_published_references_are_labelled_and_cited(built):
    _, page, _ = built
    refs = page.split('id="seed"')[1].split('id="plots"')[0]
    assert "References, not this run" in refs
    for value in ("88.19", "79.51", "87.82", "1:16:22", "32:02", "1:24:51"):
        assert value in refs
    for ref in (*SEED_REPORT, *PUBLISHED):
        assert html.escape(ref.accuracy) in refs
        if ref.source.url:
            assert f'href="{html.escape(ref.source.url)}"' in refs
    # The per-epoch tables of each trained method, in the seed's columns.
    assert refs.count("<th>validation loss (held-out validation split)</th>") == sum(1 for m in rf.experiments().values() if m and m.get("history"))


def test_method_notes_cite_measured_numbers(built):
    _, page, metrics = built
    notes = page.split('id="notes"')[1].split('id="data"')[0]
    for title in ("all parameters, top layers, LoRA", "Hard and soft prompts", "Zero-shot and one-shot",
                  "How QLoRA works", "Why these hyperparameters"):
        assert title in notes
    assert "Measured in this run" in notes
    assert html.escape(next(f.text for f in F.compute(metrics) if f.topic == "quantization")) in notes
    assert html.escape(metrics["zero_shot"]["prompt"]["template"]) in notes


def test_no_remote_resource_in_report_or_notebook_pages(built):
    page_path, page, _ = built
    assert not remote_problems(page)
    assert "<script" not in page
    nb_page = page_path.parent / "notebooks" / "full_finetune.html"
    text = nb_page.read_text(encoding="utf-8")
    assert not remote_problems(text), remote_problems(text)[:5]
    assert not re.search(r"https?://", text)  # not even in comments: a notebook page cites nothing
    assert 'href="notebooks/full_finetune.html"' in page


def test_remote_resource_check_catches_a_cdn_script():
    assert remote_problems('<script src="https://cdn.example/x.js"></script>')
    assert remote_problems('<link rel="stylesheet" href="//cdn.example/x.css">')
    assert remote_problems("<style>@import url(https://fonts.example/f.css);</style>")
    assert not remote_problems('<a href="https://arxiv.org/abs/1">paper</a><img src="data:image/png;base64,AA">')


def test_notebook_page_folds_code_and_keeps_outputs(built):
    page_path, _, _ = built
    text = (page_path.parent / "notebooks" / "full_finetune.html").read_text(encoding="utf-8")
    assert text.count('<details class="nl-code">') == 2  # both code cells, closed by default
    assert "<details class=\"nl-code\" open" not in text
    assert "accuracy 0.5" in text and "Back to the report" in text
    assert pages.NOTEBOOK_MARK in text


def test_missing_results_and_gpu_profile_are_stated_plainly(tmp_path):
    page = build.build_report(load_profile("paper"), tmp_path / "results", tmp_path / "reports").read_text()
    assert "needs a GPU and access to the Hugging Face hub" in page
    assert "No results of this profile exist here" in page
    assert "No results yet for" in page and "not run" in page


def test_the_cli_builds_the_report_from_results_alone(tmp_path, capsys):
    """`nlilab report` reads metrics.json files and renders; it never runs an experiment."""
    fixture = rf.experiments()
    for name in ("data", "full_finetune"):
        folder = tmp_path / "results" / "tiny" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(__import__("json").dumps(dict(fixture[name], profile="tiny")))
    code = main(["report", "--profile", "tiny", "--results-dir", str(tmp_path / "results"),
                 "--reports-dir", str(tmp_path / "reports")])
    assert code == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == tmp_path / "reports" / "tiny" / "index.html"
    block = fixture["full_finetune"]["validation_matched"]
    iv = stats.accuracy_interval(np.asarray(block["predictions_runs"]) == np.asarray(block["labels"]))
    assert f"63.3 [{pct(iv['low'])}, {pct(iv['high'])}]" in out.read_text()
    assert not (tmp_path / "results" / "tiny" / "full_finetune" / "seed_0").exists()


def test_profile_statement_for_bundled_stand_ins():
    prof = load_profile("cpu")
    text = sections.profile_statement(prof, {})
    assert "not comparable with published MultiNLI results" in text and "stand-in" in text


def _strip(value, key, replacement):
    """A copy of a metrics.json body with `key` removed (replacement is _GONE) or set to `replacement` at every
    depth: top level, split blocks, sweep points, run records."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == key:
                if replacement is not _GONE:
                    out[k] = replacement
                continue
            out[k] = _strip(v, key, replacement)
        return out
    if isinstance(value, list):
        return [_strip(v, key, replacement) for v in value]
    return value


_GONE = object()
REQUIRED = {"experiment", "kind", "validation_matched", "accuracy"}  # what every metrics.json must have
# The fields plots read: these are also fuzzed through the plots section (the rest only through the text).
PLOTTED = {"history", "epoch", "train_loss", "validation_loss", "trainable_params", "train_wall_time_s", "confusion",
           "per_genre", "sweep", "points", "value", "accuracy_std", "prediction_distribution", "majority_baseline",
           "collapsed", "mode"}
NULLABLE_PLOTTED = {"history", "trainable_params", "train_wall_time_s", "confusion", "per_genre", "sweep", "points",
                    "accuracy_std", "prediction_distribution", "majority_baseline"}  # null is plausible for these


def _field_names(value) -> set:
    """Field names of the metrics.json contract found in the fixtures (not data keys such as label or genre
    names, which are values, not fields)."""
    data_keys = {"per_genre", "prediction_distribution", "label_counts", "genre_counts", "dropped_unlabeled",
                 "data_sizes", "label_words", "parameters", "packages"}
    if isinstance(value, dict):
        out = set(value)
        for k, v in value.items():
            if k not in data_keys:
                out |= _field_names(v)
        return out
    if isinstance(value, list):
        return set().union(*(_field_names(v) for v in value)) if value else set()
    return set()


def test_any_optional_field_may_be_missing_or_null(tmp_path, monkeypatch):
    """Drop (or null) each optional field in every result at once: every section still builds, with no error
    banner and no plot that failed. Plots are drawn but neither laid out nor encoded, to keep this fast."""
    from matplotlib.figure import Figure

    from nlilab.report import plots

    def quick_uri(fig):
        plots._plt().close(fig)
        return "data:image/png;base64,"

    monkeypatch.setattr(plots, "to_data_uri", quick_uri)
    monkeypatch.setattr(Figure, "tight_layout", lambda self, *a, **k: None)
    monkeypatch.setattr(sections, "git_commit", lambda: "abc")  # one `git` call per section build adds up
    monkeypatch.setattr(stats, "RESAMPLES", 40)  # intervals are checked elsewhere; here only that pages build
    base = {k: v for k, v in rf.experiments().items() if v}
    few = {k: base[k] for k in ("lora_sweep", "zero_shot")}  # between them, every plot: fewest figures
    keys = sorted(set().union(*(_field_names(m) for m in base.values())) - REQUIRED)
    assert {"history", "trainable_params", "sweep", "weight_footprint_mb", "run_record"} <= set(keys)
    prof = rf.profile(tmp_path)
    for key in keys:
        for replacement in (_GONE, None):
            results = {n: _strip(m, key, replacement) for n, m in base.items()}
            usable = F.scored(results, {})
            found = F.compute(results, {})
            parts = [sections.results_table(prof, results, {}), sections.status_banners(prof, results, {}),
                     sections.header_table(prof, results), sections.history_tables(usable),
                     sections.seed_side_by_side(usable), sections.findings_section(found),
                     sections.notes_section(usable, found), sections.data_section(results)]
            if key in PLOTTED and (replacement is _GONE or key in NULLABLE_PLOTTED):
                parts.append(sections.plots_section({n: _strip(m, key, replacement) for n, m in few.items()}))
            page = "".join(parts)
            assert "could not be" not in page, (key, replacement, re.findall(r"could not be [^<]*", page)[:2])


def test_paired_differences_table_matches_independent_bootstrap(built):
    _, page, metrics = built
    section = page.split("<h3>Paired differences</h3>")[1].split("</table>")[0]
    a, b = metrics["lora"]["validation_matched"], metrics["full_finetune"]["validation_matched"]
    d = stats.paired_difference(np.asarray(a["predictions_runs"]) == np.asarray(a["labels"]),
                                np.asarray(b["predictions_runs"]) == np.asarray(b["labels"]))
    row = section.split("lora - full_finetune")[1].split("</tr>")[0]
    assert f"{100 * d['diff']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" in row
    assert html.escape(stats.verdict(d)) in row


def test_collapse_margin_and_stand_ins_are_stated_from_their_sources(built):
    _, page, _ = built
    from nlilab.evaluation.metrics import COLLAPSE_MARGIN

    assert f"at most {100 * COLLAPSE_MARGIN:g} points above the majority class" in page
    top = page.split('id="results"')[0]
    assert "smollm2: its weights came as a Q4_1 GGUF file" in top and "16-bit copy of Q4_1-rounded weights" in top
    assert "validation loss (held-out validation split)" in page
