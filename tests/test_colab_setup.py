"""The notebooks' set-up cell (nlilab/colab.py): the same in every notebook, and in Colab (a stand-in
`google.colab` module) it clones and installs nlilab with its pinned requirements, and picks the `gpu` profile
when a GPU is present. The installer is stubbed: the commands are recorded, not run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nlilab import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _setup_cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if colab.SETUP_TAG in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_carries_the_same_setup_cell_without_outputs(path):
    (cell,) = _setup_cells(path)
    assert "".join(cell["source"]) == colab.setup_cell(), "run `python -m nlilab.colab` to rewrite it"
    assert cell["outputs"] == [] and cell["execution_count"] is None


def test_the_readme_links_every_notebook_to_colab_and_the_makefile_pins_the_same_models():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert colab.badge(path.stem) in readme, path.stem
    pinned = re.search(r"^MODEL_PACKAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert tuple(pinned.group(1).split()) == colab.MODEL_PACKAGES


def _run_setup(monkeypatch, tmp_path, *, colab_module: bool, gpu: bool, profile: str = "cpu"):
    """Execute the set-up cell in `tmp_path` (as Colab's /content); return (commands run, the profile after)."""
    commands = []

    def fake_run(cmd, *args, **kwargs):
        commands.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0 if gpu else 9)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu else None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if colab_module:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {"profile": profile}
    exec(colab.setup_cell(), namespace)  # noqa: S102 - the cell's own code, as Colab runs it
    return commands, namespace["profile"]


def test_in_colab_with_a_gpu_the_cell_installs_nlilab_and_picks_the_gpu_profile(monkeypatch, tmp_path):
    commands, profile = _run_setup(monkeypatch, tmp_path, colab_module=True, gpu=True)
    checkout = str(tmp_path / "nlilab")
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    assert commands == [
        ["git", "clone", "--depth", "1", "--branch", colab.BRANCH, colab.REPOSITORY_URL, checkout],
        pip + ["-r", str(tmp_path / "nlilab" / "requirements.txt")],
        pip + ["--no-deps", *colab.MODEL_PACKAGES, "-e", checkout],
        ["nvidia-smi", "-L"],
    ]
    assert profile == "gpu"


def test_in_colab_without_a_gpu_or_with_a_chosen_profile_the_profile_stays(monkeypatch, tmp_path):
    commands, profile = _run_setup(monkeypatch, tmp_path, colab_module=True, gpu=False)
    assert profile == "cpu" and ["nvidia-smi", "-L"] not in commands and len(commands) == 3
    (tmp_path / "nlilab").mkdir()  # a second run of the cell: already cloned, installed again, not cloned
    commands, profile = _run_setup(monkeypatch, tmp_path, colab_module=True, gpu=True, profile="tiny")
    assert profile == "tiny" and commands[0][:3] != ["git", "clone", "--depth"] and len(commands) == 2


def test_outside_colab_the_cell_installs_nothing(monkeypatch, tmp_path):
    commands, profile = _run_setup(monkeypatch, tmp_path, colab_module=False, gpu=True)
    assert commands == [] and profile == "cpu"
