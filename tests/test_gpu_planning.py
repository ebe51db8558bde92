"""Planning for real GPUs on a CPU machine: precision `auto`, the memory estimate against a 16 GB and an 80 GB card
(stand-ins), and the messages for gated models. The architectures are roberta-large's and Llama-3-8B's published
shapes, built on the meta device: nothing is downloaded."""

from __future__ import annotations

import pytest

from nlilab.errors import ModelError
from nlilab.models import memory, resolve
from nlilab.training.precision import compute_dtype, cpu_flags, cpu_has_native_bf16, resolve_precision

# config.json fields of the two architectures the paper profile uses
ROBERTA_LARGE = dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)
LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                 max_position_embeddings=8192, tie_word_embeddings=False)
GB = 10**9


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("device, gpu_bf16, flags, expected", [
    ("cuda", True, set(), "bf16"),                       # A100, H100, L4
    ("cuda", False, set(), "fp16"),                      # T4, V100: fp16 with loss scaling
    ("cpu", None, {"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ("cpu", None, {"avx2", "amx_bf16", "amx_tile"}, "bf16"),
    ("cpu", None, {"avx2", "fma"}, "fp32"),              # bf16 would be emulated
    ("cpu", None, {"avx2", "avx512f"}, "fp32"),          # AVX-512 without its BF16 extension
])
def test_auto_precision_follows_the_hardware(device, gpu_bf16, flags, expected):
    precision, why = resolve_precision("auto", device, gpu_bf16=gpu_bf16, flags=flags)
    assert precision == expected
    assert why.startswith("auto:")


def test_an_explicit_precision_is_kept_and_qlora_compute_follows_auto():
    assert resolve_precision("fp32", "cuda", gpu_bf16=True) == ("fp32", "set in the profile")
    assert compute_dtype("auto", "fp16") == "fp16" and compute_dtype("bf16", "fp16") == "bf16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_has_native_bf16(cpu_flags(info)) and not cpu_has_native_bf16(cpu_flags(tmp_path / "none"))


# ------------------------------------------------------------------------------------------------ memory
@pytest.fixture(scope="module")
def shapes():
    return {"roberta": memory.shape_of(ROBERTA_LARGE), "llama": memory.shape_of(LLAMA3_8B)}


def test_parameter_counts_match_the_published_sizes(shapes):
    assert 350e6 < shapes["roberta"].params < 360e6  # roberta-large: 355M
    llama = shapes["llama"]
    assert 7.9e9 < llama.params + llama.vocab * llama.hidden < 8.1e9  # Llama-3-8B with its untied output layer


def test_llama3_8b_prompting_in_16_bits_fits_80_not_16_gb(shapes):
    sixteen = memory.prompting_estimate("zero_shot", shapes["llama"], batch=8, length=256, weights="bf16")
    four = memory.prompting_estimate("zero_shot", shapes["llama"], batch=8, length=256, weights="nf4")
    assert 15 * GB < sixteen.parts["weights"] < 17 * GB  # the "about 16 GB"
    assert sixteen.total > 16 * GB > four.total and sixteen.total < 80 * GB
    assert "GiB" in sixteen.describe() and "weights" in sixteen.describe()


def test_full_finetuning_needs_more_than_lora_and_batch_size_scales_activations(shapes):
    roberta = shapes["roberta"]
    full = memory.training_estimate("full", roberta, trainable=roberta.params, batch=32, length=128, precision="bf16")
    lora = memory.training_estimate("lora", roberta, trainable=800_000, batch=32, length=128, precision="bf16")
    half = memory.training_estimate("full", roberta, trainable=roberta.params, batch=16, length=128, precision="bf16")
    assert full.total > lora.total
    assert half.parts["activations"] == pytest.approx(full.parts["activations"] / 2)
    assert full.parts["gradients and Adam"] == roberta.params * 12


def test_qlora_with_checkpointing_fits_a_16_gb_card(shapes):
    llama = shapes["llama"]
    est = memory.training_estimate("qlora", llama, trainable=20_000_000, batch=8, length=128, precision="bf16",
                                   quantized="nf4", checkpointing=True)
    assert est.total < 16 * GB
    assert est.parts["weights"] < llama.params * 1.0  # 4-bit linear layers: well under a byte a weight


# ------------------------------------------------------------------------------------------------ gated models
class _Response:
    def __init__(self, status):
        self.status_code = status


def _hub_error(cls, status):
    """The hub's exception as raised for an HTTP `status`, without the request it would carry."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, f"HTTP {status}")
    exc.response = _Response(status)
    return exc


@pytest.mark.parametrize("raised, words", [
    ("gated", ["gated", "no Hugging Face token is set", "accept its licence", "HF_TOKEN", "`model:`"]),
    ("missing", ["no such model", "`model:`"]),
    ("refused", ["refused the token (HTTP 401)", "settings/tokens"]),
])
def test_gated_or_refused_models_say_how_to_get_access(monkeypatch, raised, words):
    import huggingface_hub
    from huggingface_hub import errors

    def fake_auth_check(repo_id, token=None):
        if raised == "gated":
            raise _hub_error(errors.GatedRepoError, 403)
        if raised == "missing":
            raise _hub_error(errors.RepositoryNotFoundError, 404)
        raise _hub_error(errors.HfHubHTTPError, 401)

    monkeypatch.setattr(huggingface_hub, "auth_check", fake_auth_check)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(resolve, "_saved_token", lambda: None)
    with pytest.raises(ModelError) as err:
        resolve.ensure_access("meta-llama/Meta-Llama-3-8B-Instruct")
    message = str(err.value)
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in message
    for word in words:
        assert word in message, word


# ------------------------------------------------------------------------------------------------ precision: auto, wired
@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512_bf16"}, "bf16"), ({"avx2"}, "fp32")])
def test_auto_is_resolved_once_for_the_machine_and_recorded(monkeypatch, flags, expected):
    from nlilab.training import precision
    from nlilab.training.trainer import resolve_device

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    config = {"name": "qlora", "device": "cpu", "precision": "auto", "compute_dtype": "auto"}
    assert resolve_device(config) == "cpu"
    assert config["precision"] == expected and config["compute_dtype"] == expected
    assert config["precision_choice"]["requested"] == "auto" and "processor" in config["precision_choice"]["why"]
    assert resolve_device(config) == "cpu" and config["precision"] == expected  # a second call changes nothing


def test_a_profile_may_ask_for_auto_precision(tmp_path):
    from nlilab import params

    path = tmp_path / "auto.yaml"
    path.write_text("shared: {precision: auto, data: {source: bundled}}\n"
                    "experiments:\n  full_finetune: {notebook: 10_full_finetune, model: minilm}\n"
                    "  qlora: {notebook: 21_qlora, model: smollm2, compute_dtype: auto}\n")
    prof = params.load_profile(path)
    assert prof.experiments["full_finetune"]["precision"] == "auto"
    assert prof.experiments["qlora"]["compute_dtype"] == "auto"
