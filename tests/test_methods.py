"""Each encoder method trains exactly the parameters it claims, saves what reuse needs, and reloads to the same
model. Real MiniLM, four bundled pairs, no Trainer: a couple of optimizer steps by hand."""

from __future__ import annotations

import copy

import pytest
import torch

from nlilab.errors import NlilabError
from nlilab.methods import encoder as methods
from nlilab.params import load_profile

METHODS = ("full", "top_layers", "lora", "ptuning", "prefix")
HEAD_PARAMS = 384 * 3 + 3  # MiniLM hidden size x three labels, plus biases


@pytest.fixture(scope="module")
def base_config():
    return load_profile("tiny").experiments["full_finetune"]


@pytest.fixture(scope="module")
def model_path():
    from nlilab.models.resolve import resolve_model

    return resolve_model("minilm").path


@pytest.fixture(scope="module")
def batch(model_path):
    from transformers import AutoTokenizer

    from nlilab.data.nli import load_nli

    data = load_nli({"source": "bundled", "local_dir": None, "hub_id": "", "train_limit": None,
                     "eval_limit": None}, seed=0)["train"][:4]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    enc = tokenizer(data["premise"], data["hypothesis"], padding=True, truncation=True, max_length=64,
                    return_tensors="pt")
    return dict(enc), torch.tensor(data["label"])


def configure(base, method, **section):
    config = copy.deepcopy(base)
    config["method"] = method
    config["name"] = f"test_{method}"
    for key, value in section.items():
        config[key] = {**config[key], **value}
    return config


def build(base, path, method, **section):
    torch.manual_seed(0)
    return methods.build(configure(base, method, **section), path)


def expected_trainable(method: str, name: str) -> bool:
    """The rule each method promises, written independently of its builder."""
    if method == "full":
        return True
    if method == "top_layers":  # k = 2 of MiniLM's 6 layers
        return name.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.", "bert.pooler.", "classifier."))
    if method == "lora":
        return "lora_A" in name or "lora_B" in name or "classifier.modules_to_save" in name
    if method == "ptuning":
        return name.startswith("prompt_encoder.") or "classifier.modules_to_save" in name
    if method == "prefix":
        return name.startswith(("prefix.", "base.classifier."))
    raise AssertionError(method)


def train_steps(model, batch, steps: int = 2):
    """Plain Adam without weight decay, so a parameter moves only if a gradient reached it."""
    inputs, labels = batch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        opt.step()


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch[0]).logits


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameters_and_steps_change_exactly_those(base_config, model_path, batch, method):
    built = build(base_config, model_path, method, top_layers={"k": 2})
    model = built.model
    names = dict(model.named_parameters())
    trainable = methods.trainable_names(model)
    assert trainable == {n for n in names if expected_trainable(method, n)}, method
    # The head trains in every method, and its count is recorded so the trainable count visibly includes it.
    assert built.notes["head_params"] == HEAD_PARAMS
    head = {n for n in trainable if "classifier" in n}
    assert sum(names[n].numel() for n in head) == HEAD_PARAMS
    before = {n: p.detach().clone() for n, p in names.items()}
    train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable, (sorted(trainable - changed)[:5], sorted(changed - trainable)[:5])


@pytest.mark.parametrize("pooling, expected", [
    ("auto", {"classifier.weight", "classifier.bias"}),  # MiniLM is mean-pooled: no pooler weights to train
    ("cls", {"bert.pooler", "classifier.weight", "classifier.bias"}),
])
def test_top_layers_k_zero_trains_head_and_pooler_only(base_config, model_path, pooling, expected):
    config = {**base_config, "pooling": pooling}
    model = build(config, model_path, "top_layers", top_layers={"k": 0}).model
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in methods.trainable_names(model)} == expected


def test_pooling_follows_the_model_folder(base_config, model_path, tiny_roberta):
    assert methods.pooling_of(base_config, model_path) == "mean"  # MiniLM ships 1_Pooling/config.json
    assert methods.pooling_of(base_config, tiny_roberta[0]) == "cls"
    assert methods.pooling_of({**base_config, "pooling": "cls"}, model_path) == "cls"


def test_mean_pooling_is_refused_where_the_head_reads_no_pooler(base_config, tiny_roberta):
    with pytest.raises(NlilabError, match=r"pooling: 'mean' needs a BERT-style encoder .*RobertaForSequence"):
        methods.build({**base_config, "pooling": "mean"}, tiny_roberta[0])


@pytest.mark.parametrize("method", METHODS)
def test_mean_pooling_ignores_padding(base_config, model_path, batch, method):
    """Each row's logits are the same alone as in a padded batch: the mean covers real tokens only (with P-tuning's
    virtual tokens and under deep prompts' widened mask too)."""
    model = build(base_config, model_path, method).model
    inputs = batch[0]
    lengths = inputs["attention_mask"].sum(dim=1)
    row = int(lengths.argmin())  # the most padded row
    alone = {k: v[row:row + 1, :int(lengths[row])] for k, v in inputs.items()}
    torch.testing.assert_close(logits(model, (alone, None))[0], logits(model, batch)[row], rtol=0, atol=1e-5)


def test_top_layers_k_above_layer_count_is_refused(base_config, model_path):
    with pytest.raises(NlilabError, match=r"top_layers.k: expected at most 6 .* got 7"):
        build(base_config, model_path, "top_layers", top_layers={"k": 7})


def test_lora_unknown_target_module_is_refused(base_config, model_path):
    with pytest.raises(NlilabError, match=r"lora.target_modules: \['q_proj'\] match no module .*query"):
        build(base_config, model_path, "lora", lora={"target_modules": ["query", "q_proj"]})


def test_prefix_of_length_zero_is_the_plain_model(base_config, model_path, batch):
    from nlilab.methods.prefix import PrefixClassifier

    plain = methods._base_classifier(base_config, model_path)
    wrapped = PrefixClassifier(plain, length=0)
    assert torch.equal(logits(wrapped, batch), logits(plain, batch))


def test_masked_out_prefix_is_the_plain_model(base_config, model_path, batch):
    """A real prefix that the mask hides must change nothing: the mask is widened at the right end and the real
    tokens keep their positions. Unmasked, the same prefix does change the output."""
    from transformers import DynamicCache

    from nlilab.methods.prefix import PrefixClassifier, _plain_position_ids

    torch.manual_seed(0)
    plain = methods._base_classifier(base_config, model_path).eval()
    wrapped = PrefixClassifier(plain, length=5).eval()
    inputs = dict(batch[0])
    mask = inputs.pop("attention_mask")
    with torch.no_grad():
        hidden = plain(**inputs, attention_mask=torch.cat([torch.zeros(len(mask), 5, dtype=mask.dtype), mask], 1),
                       position_ids=_plain_position_ids(plain, inputs["input_ids"]),
                       cache=DynamicCache(ddp_cache_data=wrapped.prefix(len(mask)))).logits
    reference = logits(plain, batch)
    torch.testing.assert_close(hidden, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(wrapped, batch), reference, atol=1e-4)


@pytest.mark.parametrize("method, section", [("top_layers", {}), ("lora", {}), ("ptuning", {}), ("prefix", {}),
                                             ("prefix", {"prefix": {"projection": True}})],
                         ids=["top_layers", "lora", "ptuning", "prefix", "prefix_mlp"])
def test_save_and_reload_gives_identical_logits(base_config, model_path, batch, tmp_path, method, section):
    config = configure(base_config, method, **section)
    torch.manual_seed(0)
    built = methods.build(config, model_path)
    train_steps(built.model, batch, steps=1)  # so a reload from the pretrained weights alone would differ
    built.save(str(tmp_path))
    reloaded = methods.reload(config, model_path, tmp_path)
    torch.testing.assert_close(logits(reloaded, batch), logits(built.model, batch), rtol=0, atol=1e-5)
    # What is saved is the trained part only: far smaller than MiniLM's ~90 MB (two layers are ~15 MB).
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert size < (20e6 if method == "top_layers" else 3e6), size


@pytest.mark.parametrize("method", ("lora", "ptuning"))
def test_peft_adapter_holds_the_classification_head(base_config, model_path, tmp_path, method):
    built = build(base_config, model_path, method)
    built.save(str(tmp_path))
    keys = methods._adapter_keys(str(tmp_path))
    for tensor in ("classifier.weight", "classifier.bias"):
        assert any(k.endswith(f".{tensor}") for k in keys), keys


def test_lora_save_refuses_an_adapter_without_head(base_config, model_path, tmp_path, monkeypatch):
    built = build(base_config, model_path, "lora")
    monkeypatch.setattr(methods, "_adapter_keys", lambda folder: ["base_model.model.bert.x.lora_A.weight"])
    with pytest.raises(AssertionError, match="lacks the classification head"):
        built.save(str(tmp_path))


def test_method_labels(base_config):
    assert methods.method_label(configure(base_config, "lora", lora={"r": 16, "alpha": 32},
                                          train={"learning_rate": 2e-5})) == "LoRA r=16 alpha=32, lr 2e-5"
    assert methods.method_label(configure(base_config, "top_layers", top_layers={"k": 2})) == "Top 2 layers + head"
    swept = configure(base_config, "lora")
    swept["sweep"] = {"param": "learning_rate", "values": [1e-4, 3e-4]}
    assert methods.method_label(swept, best_value=3e-4) == "LoRA r=8 alpha=16, lr sweep (best 3e-4)"


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A randomly initialised two-layer RoBERTa saved as a folder: the paper profile's architecture, offline."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("roberta")
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=40, num_labels=3)
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    ids = torch.tensor([[0, 5, 6, 7, 2, 2, 8, 9, 2], [0, 11, 12, 2, 2, 13, 2, 1, 1]])  # 1 is RoBERTa's pad
    return str(folder), ({"input_ids": ids, "attention_mask": (ids != 1).long()}, torch.tensor([0, 2]))


def test_prefix_on_roberta_keeps_positions_and_trains_prefix_and_head(base_config, tiny_roberta):
    """RoBERTa counts positions from padding_idx + 1: a masked-out prefix must still leave it unchanged."""
    path, batch = tiny_roberta
    built = build(base_config, path, "prefix", prefix={"num_virtual_tokens": 3})
    plain = methods._base_classifier(base_config, path)
    masked = copy.deepcopy(built.model)
    inputs = dict(batch[0])
    reference = logits(plain, batch)
    assert not torch.allclose(logits(built.model, batch), reference, atol=1e-5)  # the prefix acts ...
    original = masked.base.forward

    def hide_prefix(**kwargs):  # ... and only through the attention mask's first 3 columns
        kwargs["attention_mask"] = kwargs["attention_mask"].clone()
        kwargs["attention_mask"][:, :3] = 0
        return original(**kwargs)

    masked.base.forward = hide_prefix
    torch.testing.assert_close(logits(masked, (inputs, None)), reference, rtol=0, atol=1e-5)
    assert {n.split(".")[0] for n in methods.trainable_names(built.model)} == {"prefix", "base"}
    assert all(n.startswith(("prefix.", "base.classifier.")) for n in methods.trainable_names(built.model))


@pytest.mark.parametrize("method", ("top_layers", "lora"))
def test_roberta_builds_and_trains_its_head(base_config, tiny_roberta, method):
    path, batch = tiny_roberta
    built = build(base_config, path, method, top_layers={"k": 1})
    trainable = methods.trainable_names(built.model)
    for part in ("dense", "out_proj"):  # PEFT names them classifier.modules_to_save.default.<part>
        assert any("classifier." in n and f".{part}." in n for n in trainable), (part, sorted(trainable))
    assert built.notes["head_params"] == 32 * 32 + 32 + 32 * 3 + 3  # RoBERTa's head: dense + out_proj
    train_steps(built.model, batch, steps=1)
