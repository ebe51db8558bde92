"""The comparison report: `reports/<profile>/index.html`, built from results alone.

One self-contained page (styles inline, plots embedded as data URIs, no network needed to read it), plus each
executed notebook rendered to HTML beside it.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from . import EVAL_SPLITS
from .params import Profile, load_profile
from .results import load_results, package_versions, git_commit, read_json

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.92em}
th,td{border:1px solid #d0d4da;padding:.3em .6em;text-align:right}
th{background:#f2f4f7}td:first-child,th:first-child{text-align:left}
.failed{background:#fde8e8}.collapsed{background:#fff4d6}
.banner{padding:.7em 1em;border-radius:6px;margin:1em 0}.warn{background:#fff4d6;border:1px solid #e0b84c}
.bad{background:#fde8e8;border:1px solid #d66}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}
img{max-width:100%}code{background:#f2f4f7;padding:0 .2em}
"""


def esc(value) -> str:
    return html.escape(str(value))


def pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def acc_cell(split_metrics: dict | None) -> str:
    if not split_metrics:
        return ""
    text = pct(split_metrics["accuracy"])
    if split_metrics.get("accuracy_std") and len(split_metrics.get("accuracy_runs", [])) > 1:
        text += f" ± {pct(split_metrics['accuracy_std'])}"
    return text


def _failures(results_dir: Path, profile: str) -> dict[str, dict]:
    base = results_dir / profile
    return {p.parent.name: read_json(p) for p in sorted(base.glob("*/failure.json"))} if base.is_dir() else {}


def results_table(prof: Profile, results: dict, failures: dict) -> str:
    head = ("<tr><th>experiment</th><th>model</th><th>method</th><th>status</th><th>trainable params</th>"
            "<th>share</th><th>train time (s)</th><th>samples/s</th><th>peak RSS (MiB)</th>"
            "<th>acc. matched %</th><th>acc. mismatched %</th><th>macro-F1 m.</th><th>majority m. %</th></tr>")
    rows = []
    for name, config in prof.experiments.items():
        if config["kind"] == "data":
            continue
        m, fail = results.get(name), failures.get(name)
        if fail:
            status, cls = "FAILED", "failed"
        elif m is None:
            status, cls = "not run", ""
        elif m.get("collapsed"):
            status, cls = "COLLAPSED (within 2 points of majority class)", "collapsed"
        else:
            status, cls = "ok", ""
        m = m or {}
        base = (m.get("majority_baseline") or {}).get("validation_matched", {})
        cells = [name, m.get("model", config.get("model", "")), m.get("method", config.get("method", config["kind"])),
                 status, f"{m['trainable_params']:,}" if m.get("trainable_params") is not None else "",
                 pct(m.get("trainable_share")), f"{m['train_wall_time_s']:.0f}" if m.get("train_wall_time_s") else "",
                 f"{m['train_samples_per_second']:.1f}" if m.get("train_samples_per_second") else "",
                 f"{m['cpu_rss_peak_mb']:.0f}" if m.get("cpu_rss_peak_mb") else "",
                 acc_cell(m.get("validation_matched")), acc_cell(m.get("validation_mismatched")),
                 f"{m['validation_matched']['macro_f1']:.3f}" if m.get("validation_matched") else "",
                 pct(base.get("accuracy"))]
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def history_tables(results: dict) -> str:
    parts = []
    for name, m in results.items():
        history = m.get("history")
        if not history:
            continue
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in (
                f"{row['epoch']:g}",
                "" if row.get("train_loss") is None else f"{row['train_loss']:.4f}",
                "" if row.get("validation_loss") is None else f"{row['validation_loss']:.4f}",
                "" if row.get("accuracy") is None else pct(row["accuracy"]))) + "</tr>"
            for row in history)
        parts.append(f"<h3>{esc(name)}</h3><table><tr><th>epoch</th><th>training loss</th>"
                     f"<th>validation loss</th><th>accuracy % (matched)</th></tr>{rows}</table>")
    return "".join(parts)


def notebook_links(prof: Profile, reports_dir: Path) -> str:
    items = []
    for name in prof.experiments:
        page = reports_dir / prof.name / "notebooks" / f"{name}.html"
        if page.is_file():
            items.append(f'<li><a href="notebooks/{esc(page.name)}">{esc(name)}</a></li>')
        else:
            items.append(f"<li>{esc(name)} (no executed notebook)</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render_notebooks(prof: Profile, reports_dir: Path) -> None:
    """Executed notebook -> HTML beside it, images embedded."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    for name in prof.experiments:
        source = reports_dir / prof.name / "notebooks" / f"{name}.ipynb"
        target = source.with_suffix(".html")
        if source.is_file() and (not target.is_file() or target.stat().st_mtime < source.stat().st_mtime):
            body, _ = exporter.from_filename(str(source))
            target.write_text(body, encoding="utf-8")


def build_report(prof: Profile | str, results_dir=None, reports_dir=None) -> Path:
    prof = prof if isinstance(prof, Profile) else load_profile(prof)
    first = next(iter(prof.experiments.values()))
    results_dir = Path(results_dir or first["results_dir"])
    reports_dir = Path(reports_dir or first["reports_dir"])
    results = load_results(results_dir, prof.name)
    results = {k: v for k, v in results.items() if k in prof.experiments}
    failures = _failures(results_dir, prof.name)
    render_notebooks(prof, reports_dir)
    sections = [f"<h1>nlilab report: profile <code>{esc(prof.name)}</code></h1>",
                f"<p>{esc(prof.description)}</p>", _header(prof, results)]
    if failures:
        sections.append("<h2>Failures</h2>" + "".join(
            f'<div class="banner bad"><b>{esc(n)}</b> failed:<pre>{esc(f["error"])}</pre></div>'
            for n, f in failures.items()))
    sections += ["<h2>Results</h2>", results_table(prof, results, failures),
                 "<h2>Per-epoch history</h2>", history_tables(results) or "<p>No trained experiment.</p>",
                 _curves(results), "<h2>Executed notebooks</h2>", notebook_links(prof, reports_dir)]
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>nlilab: {esc(prof.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    out = reports_dir / prof.name / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _header(prof: Profile, results: dict) -> str:
    record = next((m.get("run_record") for m in results.values() if m.get("run_record")), {}) or {}
    fingerprints = sorted({m.get("data_fingerprint") for m in results.values() if m.get("data_fingerprint")})
    sources = sorted({m.get("data_source") for m in results.values() if m.get("data_source")})
    versions = record.get("packages") or package_versions()
    rows = [("profile", prof.name), ("generated", time.strftime("%Y-%m-%d %H:%M %Z")),
            ("git commit", record.get("git_commit") or git_commit()), ("device", record.get("device", "")),
            ("data source", ", ".join(sources)), ("data fingerprint", ", ".join(fingerprints)),
            ("packages", ", ".join(f"{k} {v}" for k, v in versions.items() if v))]
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _curves(results: dict) -> str:
    histories = {name: m.get("history") for name, m in results.items() if m.get("history")}
    if not histories:
        return ""
    from .plots import learning_curves, to_data_uri

    return f'<h3>Learning curves</h3><img alt="learning curves" src="{to_data_uri(learning_curves(histories))}">'
