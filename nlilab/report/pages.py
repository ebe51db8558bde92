"""Executed notebooks as static HTML pages linked from the report."""

from __future__ import annotations

import re
from pathlib import Path

from nlilab.params import Profile
from nlilab.report.html import esc

NOTEBOOK_MARK = "<!-- nlilab notebook page v3 -->"  # a page without it predates the current template


# ------------------------------------------------------------------------------------------------ notebooks
NOTEBOOK_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block extra_css -%}
<style>details.nl-code{margin:.2em 0}details.nl-code>summary{cursor:pointer;color:#57606a;font-size:12px;
font-family:system-ui,sans-serif;padding:2px 0 2px 70px}.nl-bar{font-family:system-ui,sans-serif;font-size:14px;
padding:8px 12px;background:#eef4fb;border-bottom:1px solid #9dbbe0}.nl-bar a{color:#0b57d0;
text-decoration:underline}</style>
{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}
<div class="nl-bar">MARK Code cells are folded: click <b>code</b> above a cell's output to show it.
<a href="../index.html">Back to the report</a></div>
{%- endblock body_header -%}
{% block input_group -%}
<details class="nl-code"><summary>code</summary>{{ super() }}</details>
{%- endblock input_group %}
""".replace("MARK", NOTEBOOK_MARK)


def notebook_exporter():
    """nbconvert's lab page without its CDN scripts (require.js, MathJax, mermaid, widgets), code folded."""
    import jinja2
    from nbconvert import HTMLExporter

    loader = jinja2.DictLoader({"nlilab_notebook.html.j2": NOTEBOOK_TEMPLATE})
    return HTMLExporter(template_name="lab", template_file="nlilab_notebook.html.j2", extra_loaders=[loader],
                        embed_images=True)


def without_css_comments(page: str) -> str:
    """Drop comments inside <style> blocks: JupyterLab's stylesheets credit their sources with web addresses,
    and the page should carry none but citations."""
    def clean(match):
        return match.group(1) + re.sub(r"/\*.*?\*/", "", match.group(2), flags=re.S) + match.group(3)

    return re.sub(r"(<style[^>]*>)(.*?)(</style>)", clean, page, flags=re.S | re.I)


def render_notebook(source: Path, exporter=None):
    """Executed notebook -> HTML beside it (images embedded), unless an HTML page newer than the notebook and
    made with the current template is there. Returns the exporter, reusable for the next notebook."""
    target = source.with_suffix(".html")
    if not source.is_file():
        return exporter
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime and \
            NOTEBOOK_MARK in target.read_text(encoding="utf-8", errors="replace"):
        return exporter
    exporter = exporter or notebook_exporter()
    body, _ = exporter.from_filename(str(source))
    body = without_css_comments(body)
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)
    return exporter


def render_notebooks(prof: Profile, reports_dir: Path) -> None:
    """Every executed notebook of the profile to HTML (the runner renders each as it finishes; this catches
    the rest, e.g. after a template change)."""
    exporter = None
    for name in prof.experiments:
        exporter = render_notebook(reports_dir / prof.name / "notebooks" / f"{name}.ipynb", exporter)


def notebook_links(prof: Profile, reports_dir: Path) -> str:
    items = []
    for name, config in prof.experiments.items():
        page = reports_dir / prof.name / "notebooks" / f"{name}.html"
        if page.is_file():
            items.append(f'<li><a href="notebooks/{esc(page.name)}">{esc(name)}</a> '
                         f"<span class='note'>({esc(config['notebook'])}.ipynb, executed)</span></li>")
        else:
            items.append(f"<li>{esc(name)} <span class='note'>(no executed notebook)</span></li>")
    return ("<p>Each experiment's executed notebook, rendered as a page with its code folded away (open a cell's "
            "<b>code</b> marker to read it).</p><ul>" + "".join(items) + "</ul>")
