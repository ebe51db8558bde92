"""Model names resolve to loadable folders; hub ids fail fast offline; GGUF conversion is atomic."""

import time
from pathlib import Path

import pytest

import nlilab.models as models
from nlilab.errors import ModelError


def test_minilm_alias_resolves_to_the_installed_folder():
    resolved = models.resolve_model("minilm")
    assert resolved.source == "alias" and (Path(resolved.path) / "config.json").is_file()


def test_unknown_alias_is_named_with_the_known_ones():
    problem = models.check_model_name("minlm")
    assert "unknown model 'minlm'" in problem and "minilm" in problem and "smollm2" in problem
    with pytest.raises(ModelError):
        models.resolve_model("minlm")


def test_local_folder_is_taken_as_is(tmp_path):
    assert models.resolve_model(str(tmp_path)).path == str(tmp_path.resolve())


def test_hub_id_offline_fails_within_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id, filename="config.json": False)
    started = time.perf_counter()
    with pytest.raises(ModelError, match="model 'FacebookAI/roberta-large' .* --profile cpu"):
        models.resolve_model("FacebookAI/roberta-large")
    assert time.perf_counter() - started < 5


def test_gguf_conversion_is_atomic_and_done_once(monkeypatch, tmp_path):
    monkeypatch.setenv("NLILAB_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_dequantize(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        if len(calls) == 1:
            raise KeyboardInterrupt  # interrupted half-way

    monkeypatch.setattr(models, "_dequantize_gguf", fake_dequantize)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(gguf)
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written is left behind
    target = models.convert_gguf(gguf)
    assert (target / "config.json").is_file()
    models.convert_gguf(gguf)
    assert len(calls) == 2  # the second call found the finished folder


@pytest.mark.slow
def test_smollm2_gguf_converts_to_a_loadable_llama_folder():
    from transformers import AutoConfig

    resolved = models.resolve_model("smollm2")
    config = AutoConfig.from_pretrained(resolved.path)
    assert config.model_type == "llama"
    assert any(Path(resolved.path).glob("*.safetensors"))
