"""The report's sections, each built from results alone: results table, banners, data, histories, plots, findings, notes."""

from __future__ import annotations

import time
from pathlib import Path

from nlilab import EVAL_SPLITS, LABELS
from nlilab.evaluation import stats
from nlilab.params import Profile
from nlilab.report import findings as F
from nlilab.report.html import (
    MARGIN,
    MATCHED,
    MISMATCHED,
    _num,
    acc_cell,
    esc,
    hms,
    pct,
    size_text,
    table,
)
from nlilab.report.references import PUBLISHED, SEED_REPORT, Reference
from nlilab.results import git_commit, package_versions, read_json


# ------------------------------------------------------------------------------------------------ inputs
def _failures(results_dir: Path, profile: str) -> dict[str, dict]:
    base = results_dir / profile
    return {p.parent.name: read_json(p) or {} for p in sorted(base.glob("*/failure.json"))} if base.is_dir() else {}


def status_of(name: str, m: dict | None, failures: dict) -> tuple[str, str]:
    """(words, css class) for the results table; failure outranks collapse, which outranks ok."""
    if name in failures:
        return ("FAILED" + (" (numbers below are from an earlier run)" if m else ""), "failed")
    if m is None:
        return "not run", ""
    if m.get("status", "ok") != "ok":
        return f"status: {m.get('status')}", "failed"
    if F.collapsed(m) and m.get("kind") != "data":
        return f"COLLAPSED (at most {MARGIN} above the majority class)", "collapsed"
    return "ok", ""


def method_text(m: dict, config: dict) -> str:
    label = F.stored_label(m, m.get("method") or config.get("method") or config["kind"])
    if m.get("best_value") is not None and "best" not in label:
        label += f" (sweep, best lr {_num(m['best_value'], 'g')})"
    if m.get("quantization") and str(m["quantization"]).lower() not in label.lower():
        label += f", {m['quantization']}"
    return label


# ------------------------------------------------------------------------------------------------ sections
RESULT_HEADER = ["experiment", "method", "model", "status", "seeds", "trainable params (share)", "train time / seed",
                 "throughput", "peak memory (MiB)", "size on disk", "acc. matched %", "acc. mismatched %",
                 "macro-F1 m / mm", "majority class % m / mm"]


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}" if a or b else ""


def _trainable(m: dict) -> str:
    count = m.get("trainable_params")
    if count is None:
        return ""
    text = _num(count, ",.0f")
    if m.get("trainable_share") is not None:
        text += f" ({_num(100 * m['trainable_share'], '.3g')}%)"
    return text


def _train_time(m: dict) -> str:
    """CPU time per seed (fair) and wall time with what ran beside it; a sweep adds the whole sweep's cost."""
    cost, parts = m.get("cost") or {}, []
    if cost.get("train_cpu_time_s"):
        parts.append(f"{_num(cost['train_cpu_time_s'], '.0f')} s CPU")
    if m.get("train_wall_time_s"):
        beside = len((m.get("schedule") or {}).get("overlapped_with") or [])
        parts.append(hms(m["train_wall_time_s"]) + " wall" + (f" (ran beside {beside} other{'s' if beside > 1 else ''})" if beside else "")
                     + ("" if cost else " (not comparable)"))
    sweep = m.get("sweep") or {}
    if sweep.get("total_cpu_time_s") or sweep.get("total_wall_time_s"):
        parts.append(f"whole sweep {_num(sweep.get('total_cpu_time_s'), '.0f')} s CPU, "
                     f"{hms(sweep.get('total_wall_time_s'))} wall")
    return "; ".join(parts)


def _throughput(m: dict) -> str:
    window = (m.get("cost") or {}).get("window") or {}
    if window.get("samples_per_second"):
        return f"{_num(window['samples_per_second'], '.1f')} train samples/s (exclusive window)"
    if window.get("examples_per_second"):
        return f"{_num(window['examples_per_second'], '.1f')} scored ex/s (exclusive window)"
    parts = []
    if m.get("train_samples_per_second"):
        parts.append(f"{_num(m['train_samples_per_second'], '.1f')} train samples/s")
    if m.get("examples_per_second"):
        parts.append(f"{_num(m['examples_per_second'], '.1f')} scored ex/s")
    return ", ".join(parts) + (" (not comparable)" if parts else "")


def _memory(m: dict) -> str:
    cost = m.get("cost") or {}
    if cost.get("peak_rss_mb"):
        text = f"RAM {_num(cost['peak_rss_mb'], '.0f')} (per-seed peak)"
        if cost.get("training_peak_mb"):
            text += f", training peak {_num(cost['training_peak_mb'], '.0f')}"
        return text + (f", GPU {_num(cost['gpu_peak_mb'], '.0f')}" if cost.get("gpu_peak_mb") else "")
    parts = []
    if m.get("cpu_rss_peak_mb"):
        parts.append(f"RAM {_num(m['cpu_rss_peak_mb'], '.0f')}")
    if m.get("gpu_peak_mb"):
        parts.append(f"GPU {_num(m['gpu_peak_mb'], '.0f')}")
    return ", ".join(parts)


def results_table(prof: Profile, results: dict, failures: dict) -> str:
    rows, classes = [], []
    for name, config in prof.experiments.items():
        if config["kind"] == "data":
            continue
        m = results.get(name)
        status, cls = status_of(name, m, failures)
        if name in failures and m:
            cls += " stale"
        m = m or {}
        base = m.get("majority_baseline") or {}
        status_html = f'<span class="status-{cls.split()[0]}">{esc(status)}</span>' if cls else esc(status)
        cells = [esc(name), esc(method_text(m, config)), esc(m.get("model", config.get("model", ""))), status_html,
                 esc(len(m["seeds"]) if m.get("seeds") else ""), esc(_trainable(m)),
                 esc(_train_time(m)), esc(_throughput(m)), esc(_memory(m)),
                 esc(size_text(m.get("disk_size_bytes"))),
                 esc(acc_cell(m.get(MATCHED))), esc(acc_cell(m.get(MISMATCHED))),
                 esc(_pair(_num((m.get(MATCHED) or {}).get("macro_f1"), ".3f"),
                           _num((m.get(MISMATCHED) or {}).get("macro_f1"), ".3f"))),
                 esc(_pair(pct((base.get(MATCHED) or {}).get("accuracy")),
                           pct((base.get(MISMATCHED) or {}).get("accuracy"))))]
        rows.append(cells)
        classes.append(cls)
    if not rows:
        return "<p>This profile has no model experiments.</p>"
    how = next(((m.get("cost") or {}).get("how") for m in results.values() if (m.get("cost") or {}).get("how")), "")
    note = ("<p class='note'>Accuracy is the mean over seeds with its 95% interval in brackets (bootstrap over the "
            "evaluation rows, combined with the seeds; older results without predictions show ± the spread over "
            "seeds instead); m: dev-matched, mm: dev-mismatched, both test sets scored once per final model; "
            "every choice (the sweep's learning rate) was made on the held-out validation split. Train time is CPU "
            "time of training per seed (comparable across methods) and wall time per seed, which depends on what "
            "ran beside it and is not compared. Throughput comes from an exclusive timing window; peak memory is "
            "the per-seed peak resident memory. " + esc(how) + " Figures marked (not comparable) come from older "
            "results measured while other experiments may have run. A run is "
            f"COLLAPSED when its accuracy on either dev split is at most {MARGIN} above always predicting the "
            "training set's most frequent label (the majority class).</p>")
    return table(RESULT_HEADER, rows, classes, raw=True) + note


def status_banners(prof: Profile, results: dict, failures: dict) -> str:
    parts = []
    for name, fail in failures.items():
        parts.append(f'<div class="banner bad"><b>FAILED: {esc(name)}</b> did not finish; the last lines of its '
                     f'error:<pre>{esc(fail.get("error", "(no error text recorded)"))}</pre></div>')
    gone = [n for n, m in results.items() if n not in failures and m.get("kind") != "data" and F.collapsed(m)]
    if gone:
        parts.append(f'<div class="banner warn"><b>COLLAPSED: {esc(", ".join(gone))}</b>: accuracy at most {MARGIN} '
                     "above the majority-class baseline on a dev split; these runs learned (almost) nothing "
                     "and their numbers must not be read as the method's performance.</div>")
    missing = [n for n in prof.experiments if n not in results and n not in failures]
    if missing:
        parts.append(f'<div class="banner info"><b>No results yet for {len(missing)} of {len(prof.experiments)} '
                     f'experiment(s):</b> {esc(", ".join(missing))}. Run <code>nlilab run --profile '
                     f"{esc(prof.name)}</code> to produce them.</div>")
    return "".join(parts)


def profile_statement(prof: Profile, results: dict) -> str:
    """What the profile is, in plain words, from its own settings (data source, models, device)."""
    configs = list(prof.experiments.values())
    sources = {c["data"]["source"] for c in configs}
    models = sorted({c["model"] for c in configs if c.get("model")})
    from nlilab.models.resolve import ALIASES

    stand_ins = models and all(m in ALIASES for m in models)
    words = []
    if prof.name == "tiny":
        words.append("This is the smoke-test profile: a few dozen pairs and a few optimizer steps per method. Its "
                     "numbers only show that every code path runs; they are not results.")
    if stand_ins:
        words.append(f"Small stand-in models ({', '.join(models)}) take the place of roberta-large and "
                     "Llama-3-8B so that everything runs on a CPU without the model hub.")
    for model in sorted({m.get("model") for m in results.values() if F.provenance_text(m)}):
        words.append(f"{model}: " + F.provenance_text(next(m for m in results.values() if m.get("model") == model
                                                           and F.provenance_text(m))) + ".")
    if sources == {"bundled"}:
        words.append("Training and scoring use the project's bundled, hand-written NLI set, not MultiNLI, so "
                     "the numbers are not comparable with published MultiNLI results (or with the seed report).")
    elif "local" in sources:
        words.append("The data is a sample of real MultiNLI read from a local folder; with "
                     + ("stand-in models " if stand_ins else "these models ")
                     + "and a sample this size, the numbers are not comparable with published full-size results.")
    elif "hub" in sources:
        limited = any(c["data"].get("train_limit") or c["data"].get("eval_limit") for c in configs)
        words.append("The data is MultiNLI from the Hugging Face hub"
                     + (", cut to the profile's train_limit / eval_limit." if limited else ", in full."))
    needs_gpu = any(c.get("device") == "cuda" for c in configs)
    if needs_gpu or "hub" in sources:
        words.append("This profile needs " + " and ".join(filter(None, [
            "a GPU" if needs_gpu else "", "access to the Hugging Face hub" if "hub" in sources else ""]))
                     + "; it cannot run on a machine without them, where nlilab stops within seconds and says why.")
        if not any(n in results for n in prof.experiments if prof.experiments[n]["kind"] != "data"):
            words.append("No results of this profile exist here, so every table below is empty: this is expected "
                         "on a machine without a GPU and the hub, not an error of the report.")
    return f'<div class="banner info"><b>What this profile is.</b> {esc(" ".join(words))}</div>' if words else ""


def header_table(prof: Profile, results: dict) -> str:
    record = next((m.get("run_record") for m in results.values() if m.get("run_record")), {}) or {}
    fingerprints = sorted({m.get("data_fingerprint") for m in results.values() if m.get("data_fingerprint")})
    sources = sorted({m.get("data_source") for m in results.values() if m.get("data_source")})
    devices = sorted({(m.get("run_record") or {}).get("device") for m in results.values()} - {None})
    commits = sorted({(m.get("run_record") or {}).get("git_commit") for m in results.values()} - {None})
    versions = record.get("packages") or package_versions()
    finished = sorted(m.get("finished_at") for m in results.values() if m.get("finished_at"))
    rows = [("profile", f"{prof.name} ({prof.path.name})"), ("description", prof.description),
            ("report built", time.strftime("%Y-%m-%d %H:%M %Z")),
            ("experiments finished", f"{finished[0]} to {finished[-1]}" if finished else "none"),
            ("git commit of the results", ", ".join(commits) or ""),
            ("git commit of the report", git_commit() or ""), ("device", "; ".join(devices)),
            ("data source", ", ".join(sources)), ("data fingerprint", ", ".join(fingerprints)),
            ("packages", ", ".join(f"{k} {v}" for k, v in versions.items() if v))]
    if len(fingerprints) > 1:
        rows.append(("WARNING", "experiments were run on different data (several fingerprints): compare with care"))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table class='meta'>{body}</table>"


def data_section(results: dict) -> str:
    data = next((m for m in results.values() if m.get("kind") == "data"), None)
    if not data:
        return "<p>No data summary (the data experiment has not run).</p>"
    sizes, dropped = data.get("data_sizes") or {}, data.get("dropped_unlabeled") or {}
    labels, genres = data.get("label_counts") or {}, data.get("genre_counts") or {}
    rows = [[split, sizes.get(split, ""), dropped.get(split, ""),
             *[(labels.get(split) or {}).get(label, "") for label in LABELS], len(genres.get(split) or {}) or ""]
            for split in sorted(set(sizes) | set(labels), key=lambda s: ("train", *EVAL_SPLITS).index(s)
                                if s in ("train", *EVAL_SPLITS) else 9)]
    return table(["split", "pairs", "dropped (no gold label)", *LABELS, "genres"], rows)


def history_tables(results: dict) -> str:
    parts = []
    for name, m in results.items():
        history = m.get("history")
        if not history:
            continue
        rows = [[_num(row.get("epoch"), "g"), _num(row.get("train_loss"), ".4f"),
                 _num(row.get("validation_loss"), ".4f"), pct(row.get("accuracy"))] for row in history]
        parts.append(f"<div><h4>{esc(F.display_label(name, m))}</h4>"
                     + table(["epoch", "training loss", "validation loss (held-out validation split)",
                              "accuracy % (held-out validation split)"], rows) + "</div>")
    return "<div class='grid'>" + "".join(parts) + "</div>" if parts else ""


def _cite(ref: Reference) -> str:
    words = esc(ref.source.title)
    return f'<a class="cite" href="{esc(ref.source.url)}">{words}</a>' if ref.source.url else words


def seed_side_by_side(results: dict) -> str:
    """The seed report's three numbers next to this run's experiments of the same method."""
    rows = []
    for ref in SEED_REPORT:
        ours = [(n, m) for n, m in results.items() if m.get("method") == ref.method and m.get("kind") == "encoder"]
        ours_text = "; ".join(f"{F.display_label(n, m)}: {acc_cell(m.get(MATCHED))}%" for n, m in ours) or "not run"
        times = "; ".join(hms(m.get("train_wall_time_s")) for n, m in ours if m.get("train_wall_time_s"))
        rows.append([ref.label, ref.accuracy, ref.train_time or "", ref.recipe, ours_text, times])
    return table(["method", "seed report: accuracy % (reference)", "seed report: time (reference)",
                  "seed report: recipe", "this run: accuracy % matched", "this run: train time per seed"], rows)


def references_table() -> str:
    rows = [[esc(r.label), esc(r.model), esc(r.accuracy), esc(r.split), esc(r.train_time or ""), esc(r.recipe),
             _cite(r)] for r in (*SEED_REPORT, *PUBLISHED)]
    return ('<div class="banner ref"><b>References, not this run\'s results.</b> Published or reported figures for '
            "the full-size models on MultiNLI, for orientation only: they were measured elsewhere, with other "
            "models, data and hardware than this profile's.</div>"
            + table(["method", "model", "accuracy %", "split", "training time", "recipe", "source"], rows, raw=True))


# ------------------------------------------------------------------------------------------------ plots
def _figure(alt: str, caption: str, draw) -> str:
    """One embedded plot; a plot that cannot be drawn says so instead of breaking the report."""
    from nlilab.report.plots import to_data_uri

    try:
        fig = draw()
    except Exception as exc:  # noqa: BLE001 - a missing field in one result must not lose the whole report
        return f'<p class="banner warn">Plot "{esc(alt)}" could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>'
    return f'<figure><img alt="{esc(alt)}" src="{to_data_uri(fig)}"><figcaption>{esc(caption)}</figcaption></figure>'


def _side_by_side(figures: list[str]) -> str:
    """Figures side by side where the page is wide enough (scaled down to fit)."""
    return "<div class='figs'>" + "".join(f"<div>{f}</div>" for f in figures) + "</div>" if figures else ""


def differences_section(results: dict) -> str:
    """The study's contrasts on dev-matched: paired differences with their 95% intervals, as a table and a
    figure."""
    from nlilab.report import plots

    rows = F.study_contrasts(results)
    if not rows:
        return "<p>No contrast to show: full fine-tuning or a paired method is missing.</p>"
    cells = [[label, F.contrast_text(c), c["verdict"], c.get("n", "")] for label, c in rows]
    paired = [{"label": label, "diff": c["diff"], "low": c["low"], "high": c["high"]}
              for label, c in rows if c["kind"] == "paired"]
    figure = _figure("paired differences", "Accuracy differences on dev-matched (points), each with its paired 95% "
                     "interval (bootstrap over the shared rows and the seeds): an interval that crosses zero is "
                     "not distinguishable on these rows.", lambda: plots.paired_differences(paired)) if paired else ""
    return (table(["contrast (a - b)", "difference, points [95% interval]", "verdict", "shared rows"], cells)
            + figure)


def plots_section(results: dict) -> str:
    from nlilab.report import plots

    parts = []
    histories = {n: [row for row in m.get("history") or [] if row.get("epoch") is not None]
                 for n, m in results.items()}
    histories = {n: h for n, h in histories.items() if h}
    if histories:
        parts.append(_figure("learning curves", "Training loss, validation loss and accuracy per epoch on the held-out validation split "
                             "for every trained method (mean over seeds).",
                             lambda: plots.learning_curves(histories)))

    def cost_rows(read):
        return [{"label": n, "x": read(m), "accuracy": 100 * F.accuracy(m), "baseline": 100 * F.baseline(m)
                 if F.baseline(m) is not None else None, "collapsed": F.collapsed(m), "interval": F.interval(m)}
                for n, m in results.items() if read(m) and F.accuracy(m) is not None]

    def cpu_time(m):
        return (m.get("cost") or {}).get("train_cpu_time_s")

    by_params, by_time = cost_rows(lambda m: m.get("trainable_params")), cost_rows(cpu_time)
    unfair = [n for n, m in results.items() if m.get("train_wall_time_s") and not cpu_time(m)]
    untrained = [n for n, m in results.items() if m.get("trainable_params") == 0]
    skip = f" Not shown: {', '.join(untrained)} (no trained parameters)." if untrained else ""
    pair = []
    if by_params:
        pair.append(_figure("accuracy against trainable parameters", "Dev-matched accuracy against the number of "
                             "trainable parameters (log scale), with 95% intervals; hollow red points collapsed." + skip,
                             lambda: plots.accuracy_scatter(by_params, "trainable parameters (log scale)", log_x=True)))
    if by_time:
        pair.append(_figure("accuracy against training time", "Dev-matched accuracy (95% intervals) against the "
                             "CPU time of training per seed, which does not depend on what ran beside it."
                             + (f" Not shown: {', '.join(unfair)} (older results without a comparable time)."
                                if unfair else ""),
                             lambda: plots.accuracy_scatter(by_time, "training CPU time per seed (s)")))
    parts.append(_side_by_side(pair))
    pair = []
    for split in EVAL_SPLITS:
        matrices = {n: m[split]["confusion"] for n, m in results.items() if (m.get(split) or {}).get("confusion")}
        if matrices:
            pair.append(_figure(f"confusion matrices {split}", f"Confusion matrices on {split} (rows: gold label, "
                                 "columns: prediction; counts summed over seeds).",
                                 lambda mats=matrices, s=split: plots.confusion_grid(mats, s)))
    # Two grids of up to three matrices fit side by side; more would shrink them past reading.
    few = sum(1 for m in results.values() if (m.get(MATCHED) or {}).get("confusion")) <= 3
    parts.append(_side_by_side(pair) if few else "".join(pair))
    genre_tables = {s: {n: m[s]["per_genre"] for n, m in results.items() if (m.get(s) or {}).get("per_genre")}
                    for s in EVAL_SPLITS}
    if any(genre_tables.values()):
        parts.append(_figure("accuracy per genre", "Accuracy per genre on the matched split (genres seen in "
                             "training) and the mismatched split (genres never seen).",
                             lambda: plots.per_genre_heatmaps(genre_tables)))
    last = []  # the sweep and prompting figures, side by side
    sweeps = {n: m for n, m in results.items() if (m.get("sweep") or {}).get("points")}
    def sweep_series(m):
        return {s: [{"value": p["value"], "accuracy": p[s]["accuracy"], "accuracy_std": p[s].get("accuracy_std"),
                     "interval": stats.block_interval(p[s]), "collapsed": p.get("collapsed")}
                    for p in m["sweep"]["points"]
                    if p.get("value") is not None and (p.get(s) or {}).get("accuracy") is not None]
                for s in ("validation", *EVAL_SPLITS)}

    for name, m in sweeps.items():
        last.append(_figure(f"learning-rate sweep {name}", f"{F.display_label(name, m)}: accuracy against the "
                             "learning rate (log scale) on the held-out validation split (which chose the value) and the two test "
                             "splits; error bars are 95% intervals (the spread over seeds in older results).",
                             lambda m=m: plots.accuracy_vs_learning_rate(sweep_series(m), F.baseline(m))))
    prompting = {n: m for n, m in results.items() if m.get("kind") == "prompting"
                 and (m.get(MATCHED) or {}).get("prediction_distribution")}
    if prompting:
        def distributions():
            first = next(iter(prompting.values()))[MATCHED]
            gold = {label: sum(row) for label, row in zip(LABELS, first.get("confusion") or [])}
            dists = {"gold labels": gold} if sum(gold.values()) else {}
            dists.update({n: m[MATCHED]["prediction_distribution"] for n, m in prompting.items()})
            return plots.prediction_shares(dists)

        last.append(_figure("prompting prediction distribution", "Share of each predicted label on dev-matched for "
                             "the prompting experiments, under the gold labels' own shares: a prompt that always "
                             "answers one label shows as a single colour.", distributions))
    parts.append(_side_by_side(last))
    if not sweeps:
        parts.append("<p class='note'>No learning-rate sweep in this profile's results.</p>")
    if not prompting:
        parts.append("<p class='note'>No prompting experiment in this profile's results.</p>")
    return "".join(parts) or "<p>No results to plot.</p>"


# ------------------------------------------------------------------------------------------------ prose
def findings_section(found: list) -> str:
    if not found:
        return "<p>No findings: no experiment has a result yet.</p>"
    parts = []
    for title, items in F.by_topic(found):
        parts.append(f"<h3>{esc(title)}</h3><ul class='findings'>"
                     + "".join(f"<li>{esc(f.text)}</li>" for f in items) + "</ul>")
    return ("<p class='note'>Each sentence below is generated from the numbers in the results; none is written "
            "by hand.</p>" + "".join(parts))


def notes_section(results: dict, found: list) -> str:
    from nlilab.report.notes import all_notes

    return "".join(f"<h3>{esc(title)}</h3>{''.join(paras)}" for title, paras in all_notes(results, found))
