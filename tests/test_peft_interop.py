"""PEFT interop: our adapters load in PEFT on transformers' RoBERTa classes with the same logits, and back."""

from __future__ import annotations

import json

import pytest
import torch
from test_multi_adapter import batch, outputs, trained_model
from transformers import RobertaForQuestionAnswering, RobertaForSequenceClassification

from roberta_lora.adapters.peft import import_peft
from roberta_lora.cli.main import main
from roberta_lora.errors import AdapterError
from roberta_lora.model.wrapper import LoraWrapperRoberta

peft = pytest.importorskip("peft")

CASES = {
    # GLUE, transformers' head, all flags on (biases -> bias="all", LayerNorms and embeddings -> modules_to_save).
    "glue": {"num_classes": 3, "head": "roberta", "targets": "all-linear", "lora_rank": 4, "lora_alpha": 16,
             "train_embeddings": True},
    # SQuAD v2, query/value, no biases, no LayerNorms.
    "squad": {"task_type": "squad_v2", "train_biases": False, "train_layer_norms": False, "lora_alpha": 4},
}


def peft_outputs(model, ids, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return [out.logits] if "logits" in out else [out.start_logits, out.end_logits]


def load_in_peft(base_dir, peft_dir, case: str):
    if case == "glue":
        base = RobertaForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    else:
        base = RobertaForQuestionAnswering.from_pretrained(base_dir)
    return peft.PeftModel.from_pretrained(base, str(peft_dir)).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_exported_adapter_gives_the_same_logits_in_peft(tiny_model_dir, tmp_path, case, capsys) -> None:
    ours = trained_model(tiny_model_dir, seed=7, **CASES[case])
    ours.save_adapter(tmp_path / "ours")
    assert main(["export-peft", "--adapter", str(tmp_path / "ours"), "--output", str(tmp_path / "peft")]) == 0
    assert "PeftModel.from_pretrained" in capsys.readouterr().out
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    theirs = load_in_peft(tiny_model_dir, tmp_path / "peft", case)
    ids, mask = batch()
    for a, b in zip(peft_outputs(theirs, ids, mask), outputs(ours, ids, mask), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    # Back again: import-peft gives our adapter with identical tensors, hence identical logits.
    args = ["import-peft", "--peft", str(tmp_path / "peft"), "--output", str(tmp_path / "back")]
    assert main(args + (["--task", "squad_v2"] if case == "squad" else [])) == 0
    back = LoraWrapperRoberta.from_adapter(tmp_path / "back")
    for a, b in zip(outputs(back, ids, mask), outputs(ours, ids, mask), strict=True):
        assert torch.equal(a, b)
    assert back.adapter_config.task_type == ours.adapter_config.task_type


def test_light_head_export_is_refused_with_the_reason(tiny_model_dir, tmp_path, capsys) -> None:
    trained_model(tiny_model_dir, seed=7).save_adapter(tmp_path / "ours")
    assert main(["export-peft", "--adapter", str(tmp_path / "ours"), "--output", str(tmp_path / "peft")]) == 2
    error = capsys.readouterr().err
    assert "light head" in error and "--head roberta" in error and "merge" in error
    assert not (tmp_path / "peft").exists()


@pytest.mark.parametrize("bias", ["all", "lora_only", "none"])
def test_a_peft_trained_adapter_imports_with_the_same_logits(tiny_model_dir, tmp_path, bias) -> None:
    torch.manual_seed(0)
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                             bias=bias, modules_to_save=["LayerNorm"] if bias == "all" else None)
    theirs = peft.get_peft_model(base, config)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():  # "training": move every trainable tensor
        for parameter in theirs.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = import_peft(tmp_path / "peft", model_id=tiny_model_dir, task="mnli",
                       label_names=["entailment", "neutral", "contradiction"])
    assert ours.adapter_config.targets == ["query", "value", "intermediate"]
    assert ours.adapter_config.label_names == ["entailment", "neutral", "contradiction"]
    assert ours.adapter_config.train_biases == (bias != "none")
    assert ours.adapter_config.train_layer_norms == (bias == "all")
    ids, mask = batch()
    torch.testing.assert_close(outputs(ours, ids, mask)[0], peft_outputs(theirs.eval(), ids, mask)[0], atol=1e-5, rtol=0)


def test_peft_features_without_an_exact_mapping_are_refused(tiny_model_dir, tmp_path) -> None:
    base = RobertaForQuestionAnswering.from_pretrained(tiny_model_dir)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="QUESTION_ANS", r=4, target_modules=["query", "value"],
                                                       rank_pattern={"value": 2}))
    theirs.save_pretrained(tmp_path / "peft")
    with pytest.raises(AdapterError, match="rank_pattern"):
        import_peft(tmp_path / "peft", model_id=tiny_model_dir)
    (tmp_path / "peft" / "adapter_model.safetensors").rename(tmp_path / "peft" / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle"):
        import_peft(tmp_path / "peft", model_id=tiny_model_dir)
