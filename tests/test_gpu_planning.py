"""Planning for real GPUs on a CPU machine: precision `auto`, the memory estimate against a 16 GB and an 80 GB card
(stand-ins), and the messages for gated models. The architectures are roberta-large's and Llama-3-8B's published
shapes, built on the meta device: nothing is downloaded."""

from __future__ import annotations

import re

import pytest

from nlilab.errors import ModelError
from nlilab.models import memory, resolve
from nlilab.training.precision import compute_dtype, cpu_flags, cpu_has_native_bf16, resolve_precision

# config.json fields of the two architectures the paper and gpu profiles use (bundled: nothing is downloaded)
from nlilab.models.architectures import LLAMA3_8B, ROBERTA_LARGE  # noqa: E402

GB, GiB = 10**9, 2**30


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


# ------------------------------------------------------------------------------------------------ memory preflight
@pytest.fixture(scope="module")
def gpu_configs():
    """The gpu profile's experiments as a T4 resolves them (precision auto -> fp16)."""
    from nlilab import params

    prof = params.load_profile("gpu")
    return [{**config, "precision": "fp16"} for config in prof.experiments.values()]


def test_the_gpu_profile_names_bundled_architectures_so_nothing_is_downloaded_to_size_it(gpu_configs):
    for config in gpu_configs:
        if "model" in config:
            assert memory.model_config(config["model"], config["revision"]) is not None, config["name"]
    assert memory.model_config("someone/Meta-Llama-3-8B-Instruct") == LLAMA3_8B  # an open copy is sized alike


def test_on_a_16_gb_card_llama_prompting_goes_to_4_bit_and_says_so(gpu_configs):
    from nlilab.run.preflight import memory_plans

    problems, notes = memory_plans(gpu_configs, card=16 * GiB)
    assert problems == {}
    prompting = [c["name"] for c in gpu_configs if c["kind"] == "prompting"]
    assert len(notes) == len(prompting) == 3
    for name, note in zip(prompting, notes):
        assert f"experiment '{name}'" in note and "in 16 bits needs about" in note
        assert "4-bit (NF4) copy" in note and "quantization: auto" in note
    zero_shot = next(c for c in gpu_configs if c["name"] == "zero_shot")
    assert memory.plan_experiment(zero_shot, 16 * GiB).weights == "nf4"


def test_on_an_80_gb_card_everything_runs_in_16_bits(gpu_configs):
    from nlilab.run.preflight import memory_plans

    assert memory_plans(gpu_configs, card=80 * GiB) == ({}, [])
    zero_shot = next(c for c in gpu_configs if c["name"] == "zero_shot")
    assert memory.plan_experiment(zero_shot, 80 * GiB).weights is None


def test_an_oversize_batch_stops_with_one_message_naming_the_experiment_and_the_setting(gpu_configs):
    from nlilab.run.preflight import memory_plans

    full = next(c for c in gpu_configs if c["name"] == "full_finetune")
    big = {**full, "train": {**full["train"], "batch_size": 512}}
    problems, _ = memory_plans([big], card=16 * GiB)
    (message,) = problems.values()
    assert "experiment 'full_finetune'" in message and "more than this GPU's 16.0 GiB" in message
    assert re.search(r"set train\.batch_size to (\d+) or less \(now 512\)", message)
    fits = int(re.search(r"to (\d+) or less", message).group(1))
    assert memory_plans([{**full, "train": {**full["train"], "batch_size": fits}}], card=16 * GiB) == ({}, [])


def test_16_bit_prompting_that_cannot_fit_names_the_4_bit_setting(gpu_configs):
    zero_shot = next(c for c in gpu_configs if c["name"] == "zero_shot")
    plan = memory.plan_experiment({**zero_shot, "quantization": "none"}, 16 * GiB)
    assert "experiment 'zero_shot'" in plan.problem and "set quantization: auto" in plan.problem
    assert "no batch size fits" in plan.problem  # the 16-bit weights alone exceed the card


def test_the_run_makes_the_preflights_choice_for_the_gpu_it_got(gpu_configs, tmp_path):
    import json

    from nlilab.prompting.weights import choose_weights

    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    zero_shot = next(c for c in gpu_configs if c["name"] == "zero_shot")
    small = choose_weights(zero_shot, str(tmp_path), "cuda", card=16 * GiB)
    assert small["weights"] == "nf4" and "4-bit (NF4) copy" in small["why"]
    assert choose_weights(zero_shot, str(tmp_path), "cuda", card=80 * GiB)["weights"] == "fp16"
    assert choose_weights(zero_shot, str(tmp_path), "cpu")["weights"] == "fp16"  # no 4-bit without a GPU


def test_without_a_gpu_the_gpu_profile_is_refused_in_one_line_for_all_its_experiments(gpu_configs, monkeypatch):
    import torch

    from nlilab.run import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    full = next(c for c in gpu_configs if c["name"] == "full_finetune")
    local = {**full, "data": {**full["data"], "source": "bundled"}, "model": "minilm", "revision": None}
    assert preflight.environment_problems(local) == [preflight.NO_GPU]
