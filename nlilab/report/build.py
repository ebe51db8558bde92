"""The comparison report: reports/<profile>/index.html, assembled from its sections, each guarded."""

from __future__ import annotations

from pathlib import Path

from nlilab.params import Profile, load_profile
from nlilab.report import findings as F
from nlilab.report.html import STYLE, esc
from nlilab.report.pages import notebook_links, render_notebooks
from nlilab.report.sections import (
    _failures,
    data_section,
    differences_section,
    findings_section,
    header_table,
    history_tables,
    notes_section,
    plots_section,
    profile_statement,
    references_table,
    results_table,
    seed_side_by_side,
    status_banners,
)
from nlilab.results import load_results

# ------------------------------------------------------------------------------------------------ the page
SECTIONS = (("results", "Results"), ("seed", "The seed's tables"), ("plots", "Plots"), ("findings", "Findings"),
            ("notes", "Method notes"), ("data", "Data"), ("notebooks", "Notebooks"))


def _section_error(what: str, exc: Exception) -> str:
    return (f'<div class="banner bad">The {esc(what)} could not be built from these results: '
            f"{esc(type(exc).__name__)}: {esc(exc)}</div>")


def guarded(what: str, build) -> str:
    """One section of the page; a result file the section cannot read shows as a visible error in its place
    instead of costing the whole report (the tests require every section to build from the fixtures)."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth having
        return _section_error(what, exc)


def build_report(prof: Profile | str, results_dir=None, reports_dir=None) -> Path:
    prof = prof if isinstance(prof, Profile) else load_profile(prof)
    first = next(iter(prof.experiments.values()))
    results_dir = Path(results_dir or first["results_dir"])
    reports_dir = Path(reports_dir or first["reports_dir"])
    loaded = load_results(results_dir, prof.name)
    results = {k: loaded[k] for k in prof.experiments if loaded.get(k)}  # in the profile's order
    failures = {k: v for k, v in _failures(results_dir, prof.name).items() if k in prof.experiments}
    render_notebooks(prof, reports_dir)
    usable = F.scored(results, failures)
    try:
        found = F.compute(results, failures)
        findings_html = findings_section(found)
    except Exception as exc:  # noqa: BLE001 - as in guarded()
        found, findings_html = [], _section_error("findings", exc)
    nav = "<nav>" + "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS) + "</nav>"
    sections = [
        f"<h1>nlilab report: profile <code>{esc(prof.name)}</code></h1>", nav,
        guarded("profile statement", lambda: profile_statement(prof, results)),
        guarded("status banners", lambda: status_banners(prof, results, failures)),
        guarded("run record", lambda: header_table(prof, results)),
        '<h2 id="results">Results</h2>', guarded("results table", lambda: results_table(prof, results, failures)),
        "<h3>Paired differences</h3>", guarded("paired differences", lambda: differences_section(usable)),
        '<h2 id="seed">The seed\'s tables, side by side</h2>',
        "<h3>Per-epoch history of each trained method (this run)</h3>",
        guarded("per-epoch tables", lambda: history_tables(usable) or "<p>No trained experiment has a history.</p>"),
        "<h3>The seed report's numbers next to this run's</h3>",
        guarded("seed table", lambda: seed_side_by_side(usable)),
        "<h3>Reference figures</h3>", references_table(),
        '<h2 id="plots">Plots</h2>', guarded("plots", lambda: plots_section(usable)),
        '<h2 id="findings">Findings</h2>', findings_html,
        '<h2 id="notes">Method notes</h2>', guarded("method notes", lambda: notes_section(usable, found)),
        '<h2 id="data">Data</h2>', guarded("data summary", lambda: data_section(results)),
        '<h2 id="notebooks">Executed notebooks</h2>', notebook_links(prof, reports_dir),
    ]
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>nlilab: {esc(prof.name)}</title><style>{STYLE}</style></head><body>{''.join(sections)}"
            "</body></html>")
    out = reports_dir / prof.name / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
