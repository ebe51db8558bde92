"""HTML primitives of the report: the page style, escaping, number formats and tables."""

from __future__ import annotations

import html
import re

from nlilab import EVAL_SPLITS
from nlilab.evaluation import stats
from nlilab.evaluation.metrics import COLLAPSE_MARGIN
from nlilab.report.formats import ci, pct

MATCHED, MISMATCHED = EVAL_SPLITS

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1320px;margin:1.5em auto;
padding:0 1.2em;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #e3e6ea;padding-bottom:.2em;margin-top:1.8em}
nav{font-size:.9em;margin:.4em 0 1em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #d0d4da;padding:.28em .5em;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.num{text-align:right;white-space:nowrap}
tr.failed td{background:#fde8e8}tr.collapsed td{background:#fff1c9}tr.stale td{color:#777}
.status-failed{color:#b3261e;font-weight:700}.status-collapsed{color:#8a5a00;font-weight:700}
.banner{padding:.7em 1em;border-radius:6px;margin:.8em 0}.warn{background:#fff4d6;border:1px solid #e0b84c}
.bad{background:#fde8e8;border:1px solid #d66}.info{background:#eef4fb;border:1px solid #9dbbe0}
.ref{background:#f7f3fb;border:1px solid #b9a3d6}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.82em;white-space:pre-wrap}
img{max-width:100%}code{background:#f2f4f7;padding:0 .2em}
.scroll{overflow-x:auto}.grid{display:flex;flex-wrap:wrap;gap:0 1.6em}.grid>div{flex:0 1 auto}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:0 1.6em;align-items:start}
figure{margin:1em 0 1.6em}figcaption{font-size:.88em;color:#444;max-width:60em}
.measured{background:#f4f8f4;border-left:3px solid #6a9f6a;padding:.3em .7em}
.findings li{margin:.25em 0}.note{color:#555;font-size:.9em}
table.meta{font-size:.8em}table.meta th,table.meta td{text-align:left;padding:.15em .6em}
table.meta th{white-space:nowrap;font-weight:600}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value, fmt: str) -> str:
    """Format a number that may be missing (blank) or not a number at all (shown as it is)."""
    if value is None:
        return ""
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def acc_cell(split_metrics: dict | None) -> str:
    """Mean accuracy with its 95% interval in brackets; an older file without predictions keeps the mean ± the
    spread over seeds."""
    if not split_metrics or split_metrics.get("accuracy") is None:
        return ""
    text = pct(split_metrics["accuracy"])
    iv = stats.block_interval(split_metrics)
    if iv:
        return text + ci(iv)
    if split_metrics.get("accuracy_std") is not None and len(split_metrics.get("accuracy_runs") or []) > 1:
        text += f" ± {pct(split_metrics['accuracy_std'])}"
    return text


MARGIN = f"{100 * COLLAPSE_MARGIN:g} points"  # the collapse margin as the page prints it


def size_text(n_bytes) -> str:
    if not n_bytes:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def hms(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(float(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


NUMERIC = re.compile(r"^[\s\d.,:%±/+\-()e]*\d[\s\d.,:%±/+\-()e]*$")


def _td(cell, raw: bool) -> str:
    text = str(cell) if raw else esc(cell)
    numeric = NUMERIC.match(re.sub(r"<[^>]+>", "", text))  # numbers line up on the right, words on the left
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def table(header: list[str], rows: list[list], classes: list[str] | None = None, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (then the caller escaped them)."""
    head = "".join(f"<th>{h if raw else esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(_td(c, raw) for c in row) + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"
