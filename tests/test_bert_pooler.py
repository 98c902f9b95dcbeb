"""The "roberta" head on a BERT-family base starts from the checkpoint's pretrained pooler, as
`BertForSequenceClassification` does, and a PEFT adapter trained with bias="all" imports with every tensor PEFT
trained (the pooler's bias too)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    BertModel,
    RobertaModel,
)

from roberta_lora.model.adapter_files import base_fingerprint
from roberta_lora.model.toy import make_toy_encoder
from roberta_lora.model.wrapper import LoraWrapperRoberta

TEXTS = (["the movie was great", "a boring film with bad acting"], ["is it?", "the cat sat on the mat"])


def with_pooler(toy: Path, destination: Path, family=BertModel) -> Path:
    """The toy checkpoint re-saved by transformers with a pooler (the toy has none), its tokenizer copied."""
    torch.manual_seed(0)
    encoder = family(family.config_class.from_pretrained(toy))  # add_pooling_layer defaults to True
    encoder.save_pretrained(destination)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(toy / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bert")
    toy = make_toy_encoder(root / "toy", "bert", seed=1)
    return {"without": toy, "with": with_pooler(toy, root / "pooled")}


def batch(base: Path) -> dict[str, torch.Tensor]:
    return dict(AutoTokenizer.from_pretrained(base)(*TEXTS, padding=True, return_tensors="pt"))


def checkpoint_pooler(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "model.safetensors"))
    return {name.removeprefix("pooler.dense."): t for name, t in weights.items() if name.startswith("pooler.dense.")}


def test_a_new_roberta_head_on_bert_starts_from_the_pretrained_pooler(bert) -> None:
    model = LoraWrapperRoberta(model_id=str(bert["with"]), head="roberta", num_classes=2, seed=0)
    pooler = checkpoint_pooler(bert["with"])
    assert torch.equal(model.head_module.dense.weight, pooler["weight"])
    assert torch.equal(model.head_module.dense.bias, pooler["bias"])
    assert model.roberta.pooler is None  # read once, then the encoder runs without it
    # At the start, the model is BertForSequenceClassification with the same classifier.
    reference = BertForSequenceClassification.from_pretrained(bert["with"], num_labels=2).eval()
    with torch.no_grad():
        reference.classifier.weight.copy_(model.head_module.out_proj.weight)
        reference.classifier.bias.copy_(model.head_module.out_proj.bias)
        ours = model.eval()(**batch(bert["with"]))["logits"]
        torch.testing.assert_close(ours, reference(**batch(bert["with"])).logits, atol=1e-6, rtol=0)


def test_the_pooler_changes_neither_the_light_head_nor_the_fingerprint(bert) -> None:
    pooled = LoraWrapperRoberta(model_id=str(bert["with"]), head="roberta", num_classes=2, seed=0)
    light = LoraWrapperRoberta(model_id=str(bert["with"]), head="light", num_classes=2, seed=0)
    assert light.roberta.pooler is None
    assert pooled.adapter_config.base_fingerprint == light.adapter_config.base_fingerprint
    passed = BertModel.from_pretrained(bert["with"])  # a model passed in keeps its pooler, same fingerprint
    assert base_fingerprint(passed) == light.adapter_config.base_fingerprint
    from_object = LoraWrapperRoberta(model_id=passed, head="roberta", num_classes=2, seed=0)
    assert torch.equal(from_object.head_module.dense.weight, pooled.head_module.dense.weight)


def test_a_bert_checkpoint_without_a_pooler_gets_a_fresh_head(bert) -> None:
    model = LoraWrapperRoberta(model_id=str(bert["without"]), head="roberta", num_classes=2, seed=0)
    twin = LoraWrapperRoberta(model_id=str(bert["with"]), head="light", num_classes=2, seed=0)
    assert model.roberta.pooler is None and twin.roberta.pooler is None
    std = model.config.initializer_range
    assert torch.count_nonzero(model.head_module.dense.bias) == 0  # the fresh draw: normal(0, std), zero bias
    assert abs(model.head_module.dense.weight.std().item() - std) < std / 2


def test_roberta_family_heads_never_start_from_a_pooler(tmp_path) -> None:
    """RobertaForSequenceClassification does not use the pooler, so neither do we."""
    toy = make_toy_encoder(tmp_path / "toy", "roberta", seed=1)
    pooled = with_pooler(toy, tmp_path / "pooled", RobertaModel)
    model = LoraWrapperRoberta(model_id=str(pooled), head="roberta", num_classes=2, seed=0)
    fresh = LoraWrapperRoberta(model_id=str(toy), head="roberta", num_classes=2, seed=0)
    assert torch.equal(model.head_module.dense.weight, fresh.head_module.dense.weight)


def test_a_peft_bias_all_adapter_on_bert_imports_every_tensor_peft_trained(bert, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    from roberta_lora.adapters.peft import import_peft

    base = BertForSequenceClassification.from_pretrained(bert["with"], num_labels=2)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, bias="all",
                                                       target_modules=["query", "value"]))
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in theirs.parameters():
            if parameter.requires_grad:  # as after training: LoRA factors, every bias, the classifier
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    trained_pooler_bias = theirs.base_model.model.bert.pooler.dense.bias.detach().clone()
    theirs.save_pretrained(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["bias"] == "all" and not any("pooler" in m for m in config.get("modules_to_save") or [])
    ours = import_peft(tmp_path / "peft", model_id=str(bert["with"]))
    assert torch.equal(ours.head_module.dense.bias, trained_pooler_bias)
    assert torch.equal(ours.head_module.dense.weight, checkpoint_pooler(bert["with"])["weight"])
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch(bert["with"]))["logits"], theirs.eval()(**batch(bert["with"])).logits,
                                   atol=1e-5, rtol=0)
