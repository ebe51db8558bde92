"""The QLoRA classifier: last-non-pad pooling, trainable and reloadable head and adapters, the quantization
that is recorded (and the explicit fallback), weight footprints. SmolLM2 on a few rows; one slow test runs the
tiny profile's LLM notebooks end to end (from the session's tiny run)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open

from nlilab import params
from nlilab.errors import NlilabError
from nlilab.methods import qlora

TEXTS = ["Premise: A dog runs.\nHypothesis: An animal moves.",
         "Premise: The committee met on Tuesday and, after a long debate about the budget, postponed the vote.\n"
         "Hypothesis: The vote happened on Tuesday.",
         "Premise: Rain fell all night.\nHypothesis: The streets are wet."]


@pytest.fixture(scope="module")
def path():
    from nlilab.models.resolve import resolve_model

    return resolve_model("smollm2").path


@pytest.fixture(scope="module")
def tokenizer(path):
    return qlora.load_tokenizer(path)


def _config(**overrides) -> dict:
    config = copy.deepcopy(params.load_profile("tiny").experiments["qlora"])
    config.update(overrides)
    return config


def _batch(tokenizer, texts=TEXTS):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_head_reads_the_last_non_pad_token(path, tokenizer):
    import torch

    model = qlora.load_base(path, tokenizer, qlora.Quantization("none", "none"), "cpu").eval()
    assert tokenizer.padding_side == "right" and model.config.pad_token_id == tokenizer.pad_token_id
    batch = _batch(tokenizer)
    assert (batch["attention_mask"] == 0).any(), "the rows must differ in length for this test"
    with torch.inference_mode():
        batched = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in TEXTS])
        hidden = model.model(**batch).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        at_last = model.score(hidden[torch.arange(len(TEXTS)), last])
        at_first = model.score(hidden[:, 0])
    assert torch.allclose(batched, alone, atol=1e-4), "padding changed a row's logits"
    assert torch.allclose(batched, at_last, atol=1e-5)
    assert not torch.allclose(batched, at_first, atol=1e-3)


@pytest.mark.parametrize("adapter, quantization, embeddings", [("lora", "nf4", False), ("lora", "nf4", True),
                                                                ("bottleneck", "none", False)])
def test_adapters_and_head_train_save_and_reload(tmp_path, path, tokenizer, adapter, quantization, embeddings):
    import torch

    config = _config(adapter=adapter, quantization=quantization, fallback=False, quantize_embeddings=embeddings)
    quant = qlora.plan_quantization(config, "cpu")
    torch.manual_seed(0)
    built = qlora.build(config, path, tokenizer, quant, "cpu")
    notes = built.notes
    assert notes["quantization"] == quantization and notes["head_trainable"] and notes["head_is_plain_linear"]
    if quantization == "nf4":
        assert notes["quantized_linear_layers"].get("Linear4bit", 0) > 0
        sixteen, _ = qlora.sixteen_bit_bytes(path)
        assert notes["weights_bytes_loaded"] < 0.5 * sixteen
        # the embedding table is a fifth of SmolLM2: in NF4 too, the base falls under a third of its 16-bit size
        assert (notes["weights_bytes_loaded"] < 0.3 * sixteen) == embeddings
        assert notes["embeddings_4bit"] == embeddings
        assert ("FrozenEmbeddingNF4" in notes["quantized_linear_layers"]) == embeddings
        assert notes["total_params_logical"] > 134_000_000  # 4-bit tensors counted at their logical size
    _trains_saves_and_reloads(built, tokenizer, tmp_path, adapter, quantization, embeddings)


def _trains_saves_and_reloads(built, tokenizer, tmp_path, adapter, quantization, embeddings=False):
    """Only the adapters and the head train, both get gradients, and the saved folder rebuilds the same model."""
    import torch

    model = built.model
    marker = "lora_" if adapter == "lora" else "bottleneck_adapter"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any(marker in n for n in trainable)
    assert all("score" in n or marker in n for n in trainable), "only adapters and the head may train"

    batch = _batch(tokenizer, TEXTS[:2])
    model.train()
    model(**batch, labels=torch.tensor([0, 2])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "score" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if marker in n)

    with torch.no_grad():  # as if trained: adapters start as identity (a zero matrix), so move them
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    model.eval()
    with torch.inference_mode():
        before = model(**batch).logits
    built.save(str(tmp_path / "model"))
    reloaded, _, meta = qlora.load_trained(str(tmp_path / "model"))
    with torch.inference_mode():
        after = reloaded(**batch).logits
    assert meta["quantization"]["quantization"] == quantization and meta["adapter"] == adapter
    assert meta["quantization"]["embeddings_4bit"] == embeddings
    assert torch.allclose(before, after, atol=1e-5), (before, after)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer):
    """A two-layer Llama with random weights and SmolLM2's tokenizer, saved as a folder: what no profile uses
    (an 8-bit base, bottleneck adapters on a 4-bit one) exercised in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("adapter, quantization", [("lora", "int8"), ("bottleneck", "nf4")])
def test_int8_base_and_bottleneck_adapters_on_a_quantized_base(tmp_path, tiny_llama, adapter, quantization):
    """bitsandbytes runs 8-bit layers on the CPU (dequantized for training): the int8 path is taken here as
    planned, not by the fallback, and trains, saves and reloads like the NF4 one."""
    import torch

    assert qlora.bnb_problem(quantization, "cpu", "fp32") is None, f"bitsandbytes {quantization} should run here"
    tokenizer = qlora.load_tokenizer(tiny_llama)
    config = _config(adapter=adapter, quantization=quantization, fallback=False, quantize_embeddings=False)
    torch.manual_seed(0)
    built = qlora.build(config, tiny_llama, tokenizer, qlora.plan_quantization(config, "cpu"), "cpu")
    notes = built.notes
    assert notes["quantization"] == quantization and notes["head_trainable"] and notes["head_is_plain_linear"]
    layer = {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[quantization]
    assert notes["quantized_linear_layers"] == {layer: 2 * 7}  # q, k, v, o, gate, up, down in each block
    sixteen, params = qlora.sixteen_bit_bytes(tiny_llama)
    assert notes["total_params_logical"] > params  # the adapters come on top of every base weight
    if quantization == "int8":
        import bitsandbytes as bnb  # PEFT's LoRA wrapper is called Linear8bitLt as well: ask for the real one

        linear = [m.weight for m in built.model.modules() if type(m) is bnb.nn.Linear8bitLt]
        weights, rows = sum(w.numel() for w in linear), sum(w.shape[0] for w in linear)
        # one byte per weight instead of two, plus one fp32 scale per output row
        assert sixteen - notes["weights_bytes_loaded"] == weights - 4 * rows
    _trains_saves_and_reloads(built, tokenizer, tmp_path, adapter, quantization)


@pytest.mark.parametrize("adapter, applied, words", [
    ("lora", "int8", "classifier: LoRA, 8-bit base"),
    ("bottleneck", "nf4", "classifier: bottleneck adapters, 4-bit NF4 base"),
    ("lora", "none", "classifier: LoRA, unquantized base"),
])
def test_the_label_names_the_adapter_and_the_quantization_applied(adapter, applied, words):
    from nlilab.experiments.qlora import QLoRA

    runs = [{"seed": 0, "method_notes": {"quantization": applied}}]
    assert QLoRA({"adapter": adapter}).label({"runs": runs}) == words


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_requested_quantization_is_honoured_or_the_fallback_recorded(monkeypatch, quantization):
    assert qlora.bnb_problem(quantization, "cpu", "fp32") is None, f"bitsandbytes {quantization} should run here"
    assert qlora.plan_quantization(_config(quantization=quantization), "cpu").record()["quantization"] == quantization
    monkeypatch.setattr(qlora, "bnb_problem", lambda *args, **kwargs: "no kernels for this device")
    with pytest.raises(NlilabError, match="fallback: true"):
        qlora.plan_quantization(_config(quantization=quantization, fallback=False), "cpu")
    record = qlora.plan_quantization(_config(quantization=quantization, fallback=True), "cpu").record()
    assert record["quantization"] == "none" and record["quantization_requested"] == quantization
    assert "no kernels for this device" in record["quantization_note"]
    assert qlora.plan_quantization(_config(quantization="none"), "cpu").record()["quantization_note"] is None


def test_sixteen_bit_footprint_matches_a_real_bf16_load(path):
    import torch
    from transformers import AutoModelForSequenceClassification

    sixteen, count = qlora.sixteen_bit_bytes(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, dtype=torch.bfloat16)
    assert sixteen == qlora.weight_bytes(model)
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == 2 * count  # buffers aside


def test_evaluation_keeps_the_dataset_order(tmp_path, tokenizer):
    """The classifier's dev scores compare predictions with the dataset's labels row by row: the Trainer must
    not shuffle evaluation batches by length (transformers 5 does when group_by_length is on)."""
    import datasets
    import torch

    from nlilab.training import trainer as training

    config = _config()
    assert config["train"]["group_by_length"]
    rows = datasets.Dataset.from_dict({"input_ids": [[5] * n for n in (3, 9, 1, 7, 2, 8, 4, 6)],
                                       "labels": [0, 1, 2, 0, 1, 2, 0, 1]})
    class Toy(torch.nn.Module):  # the sampler is all this test looks at; nothing runs through the model
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(1, 3)

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return self.head(input_ids.float()[:, :1])

    trainer = training.build_trainer(Toy(), tokenizer, {"train": rows, "validation": rows}, config, 0,
                                     tmp_path)
    seen = [int(n) for batch in trainer.get_eval_dataloader(rows) for n in batch["attention_mask"].sum(1)]
    assert seen == [3, 9, 1, 7, 2, 8, 4, 6], "evaluation rows were reordered"


@pytest.mark.slow
def test_tiny_profile_llm_experiments_end_to_end(tiny_run):
    """The LLM notebooks of the session's tiny run (tests/conftest.py): prompting and QLoRA through papermill."""
    names = ["zero_shot", "one_shot", "qlora"]
    status = {o.experiment: o.status for o in tiny_run.outcomes}
    assert [status[n] for n in names] == ["ran"] * 3, [o.error for o in tiny_run.outcomes if o.experiment in names]
    results = Path(tiny_run.results_dir) / "tiny"
    for name in names:
        metrics = json.loads((results / name / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["method_label"]
        assert "prediction_distribution" in metrics["validation_mismatched"]
    prompt = json.loads((results / "one_shot" / "metrics.json").read_text())
    assert prompt["prompt"]["name"] == "harness_mnli" and len(prompt["runs"]) == 2
    trained = json.loads((results / "qlora" / "metrics.json").read_text())
    # what this machine's bitsandbytes can do decides between the asked-for 4-bit and the allowed fallback
    asked = params.load_profile("tiny").experiments["qlora"]
    expected = "none" if qlora.bnb_problem(asked["quantization"], "cpu", asked["compute_dtype"]) else "nf4"
    assert trained["quantization"] == expected
    # the 16-bit footprint: every stored weight plus the 3-way head, two bytes each (buffers aside)
    folder = Path(trained["model_path"])
    with safe_open(str(folder / "model.safetensors"), framework="np") as handle:
        stored = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    assert trained["base_params"] == stored + 3 * hidden
    assert trained["weight_footprint_mb"]["bf16"] == pytest.approx(2 * (stored + 3 * hidden) / 2**20, rel=1e-5)
    assert trained["trainable_params"] > 0 and trained["history"]
