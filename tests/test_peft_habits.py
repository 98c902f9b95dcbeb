"""PEFT's habits on our classes: save_pretrained / from_pretrained / push_to_hub, a mixed batch through
`adapter_names=[...]`, and training with transformers' Trainer."""

from __future__ import annotations

import json

import pytest
import torch
from test_multi_adapter import batch, outputs, trained_model

import roberta_lora
from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.errors import ConfigError
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME
from roberta_lora.model.wrapper import LoraWrapperRoberta


def same_tensors(a, b) -> bool:
    """The same tensors (safetensors' header order is not fixed from one save to the next)."""
    from safetensors.torch import load_file

    first, second = load_file(a / WEIGHTS_NAME), load_file(b / WEIGHTS_NAME)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_save_pretrained_and_from_pretrained_are_save_adapter_and_from_adapter(tiny_model_dir, tmp_path) -> None:
    model = trained_model(tiny_model_dir, seed=3, num_classes=3, head="roberta")
    model.save_pretrained(tmp_path / "peft-name")
    model.save_adapter(tmp_path / "our-name")
    assert same_tensors(tmp_path / "peft-name", tmp_path / "our-name")
    configs = [{k: v for k, v in json.loads((tmp_path / d / CONFIG_NAME).read_text()).items() if "sha256" not in k}
               for d in ("peft-name", "our-name")]
    assert configs[0] == configs[1]
    back = LoraWrapperRoberta.from_pretrained(tmp_path / "peft-name")
    ids, mask = batch()
    assert torch.equal(outputs(back, ids, mask)[0], outputs(model, ids, mask)[0])
    bank = AdapterBank.from_pretrained(tmp_path / "peft-name", adapter_name="three")
    assert bank.adapters == ["three"]
    bank.save_pretrained(tmp_path / "bank-copy")
    assert same_tensors(tmp_path / "bank-copy", tmp_path / "our-name")


def test_push_to_hub_offline_is_one_clear_error_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from roberta_lora.model import hub_card

    monkeypatch.setattr(hub_card, "hub_reachable", lambda: False)
    model = trained_model(tiny_model_dir, seed=3, num_classes=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not reachable"):
        model.push_to_hub("alice/sst2-lora")
    with pytest.raises(ConfigError, match="not a hub repo id"):
        AdapterBank(model).push_to_hub("no-slash")
    assert list(tmp_path.iterdir()) == []


def test_push_to_hub_uploads_the_adapter_files_and_the_card(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from roberta_lora.model import hub_card

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded.update({p.name: p.read_bytes() for p in sorted(__import__("pathlib").Path(folder_path).iterdir())})

    monkeypatch.setattr(hub_card, "hub_reachable", lambda: True)
    monkeypatch.setattr(hub_card, "HfApi", FakeApi)
    model = trained_model(tiny_model_dir, seed=3, num_classes=2, task="sst2", label_names=["negative", "positive"])
    bank = AdapterBank(model, "sst2")
    bank.add_adapter("other", model.adapter_config, {n: t * 2 for n, t in model.adapter_state_dict().items()})
    assert bank.push_to_hub("alice/sst2-lora", adapter_name="other") == "https://huggingface.co/alice/sst2-lora"
    assert set(uploaded) == {WEIGHTS_NAME, CONFIG_NAME, "README.md"}
    assert uploaded["README.md"].startswith(b"---\n") and b"library_name: roberta-lora" in uploaded["README.md"]
    bank.save_adapter(tmp_path / "other", adapter_name="other")
    (tmp_path / "pushed").mkdir()
    (tmp_path / "pushed" / WEIGHTS_NAME).write_bytes(uploaded[WEIGHTS_NAME])
    assert same_tensors(tmp_path / "pushed", tmp_path / "other")


# ----------------------------------------------------------------------------- adapter_names=[...]
@pytest.fixture(scope="module")
def bank_of_three(tiny_model_dir):
    first = trained_model(tiny_model_dir, seed=1, num_classes=3, head="roberta")
    bank = AdapterBank(first, "a").eval()
    for seed, (name, kwargs) in enumerate({"b": {"num_classes": 3, "lora_rank": 4, "use_dora": True},
                                           "c": {"num_classes": 3, "targets": "all-linear", "use_rslora": True}}
                                          .items()):
        other = trained_model(tiny_model_dir, seed=seed + 5, **kwargs)
        bank.add_adapter(name, other.adapter_config, other.adapter_state_dict())
    return bank


def alone(bank: AdapterBank, name: str, ids, mask) -> torch.Tensor:
    model = LoraWrapperRoberta(model_id=bank.model.adapter_config.base_model, **{k: getattr(bank.get_config(name), k) for k in (
        "num_classes", "lora_rank", "lora_alpha", "targets", "head", "use_dora", "use_rslora")}).eval()
    model.apply_adapter(bank.get_config(name), bank.adapter_tensors(name))
    return outputs(model, ids, mask)[0]


def test_adapter_names_answers_a_mixed_batch_equal_to_each_adapter_alone(bank_of_three) -> None:
    ids = torch.randint(3, 400, (6, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    names = ["c", "a", "b", "a", "c", "b"]
    with torch.no_grad():
        mixed = bank_of_three(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    assert mixed.shape == (6, 3)
    for row, name in enumerate(names):
        expected = alone(bank_of_three, name, ids[row:row + 1], mask[row:row + 1])[0]
        torch.testing.assert_close(mixed[row], expected, atol=1e-5, rtol=0)
    # Without adapter_names the bank is its active adapter, as before.
    with torch.no_grad():
        torch.testing.assert_close(bank_of_three(ids, mask).logits[1], mixed[1], atol=1e-5, rtol=0)


def test_adapter_names_follows_training_and_switching(bank_of_three) -> None:
    ids, mask = batch()
    with torch.no_grad():
        before = bank_of_three(input_ids=ids, attention_mask=mask, adapter_names=["a"] * 3).logits
        next(p for p in bank_of_three.model.parameters() if p.requires_grad).add_(0.5)  # "a" trained a step
        after = bank_of_three(input_ids=ids, attention_mask=mask, adapter_names=["a"] * 3).logits
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, bank_of_three(ids, mask).logits, atol=1e-5, rtol=0)
        bank_of_three.set_adapter("b")
        switched = bank_of_three(input_ids=ids, attention_mask=mask, adapter_names=["a", "b", "a"]).logits
        torch.testing.assert_close(switched[0], after[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(switched[1], bank_of_three(ids, mask).logits[1], atol=1e-5, rtol=0)
        bank_of_three.set_adapter("a")


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"adapter_names": ["a", "zzz", "a"]}, "no adapter named 'zzz'"),
    ({"adapter_names": "a"}, "one adapter name per row"),
    ({"adapter_names": ["a", "a"]}, "pass one name per row"),
    ({"adapter_names": [3, "a", "a"]}, "expected adapter names"),
    ({"adapter_names": ["a"] * 3, "labels": torch.tensor([0, 1, 2])}, "for inference"),
    ({"adapter_names": []}, "pass one name per row"),
])
def test_bad_adapter_names_are_one_clear_error(bank_of_three, kwargs, named) -> None:
    ids, mask = batch()
    with pytest.raises(ConfigError, match=named):
        bank_of_three(input_ids=ids, attention_mask=mask, **kwargs)


def test_adapters_with_outputs_of_different_shapes_point_to_batched_adapters(bank_of_three, tiny_model_dir) -> None:
    two = trained_model(tiny_model_dir, seed=9, num_classes=2)
    bank_of_three.add_adapter("two", two.adapter_config, two.adapter_state_dict())
    ids, mask = batch()
    try:
        with pytest.raises(ConfigError, match="BatchedAdapters"):
            bank_of_three(input_ids=ids, attention_mask=mask, adapter_names=["a", "two", "a"])
    finally:
        bank_of_three.delete_adapter("two")


def test_batched_adapters_is_on_the_package_face() -> None:
    from roberta_lora.adapters.batched import BatchedAdapters

    assert roberta_lora.BatchedAdapters is BatchedAdapters and "BatchedAdapters" in roberta_lora.__all__


# ----------------------------------------------------------------------------- transformers' Trainer
def test_transformers_trainer_trains_a_lora_wrapper_and_the_adapter_saves(tiny_model_dir, tmp_path) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    generator = torch.Generator().manual_seed(0)
    rows = {"input_ids": torch.randint(3, 400, (16, 12), generator=generator).tolist(),
            "attention_mask": [[1] * 12] * 16, "labels": [i % 2 for i in range(16)]}
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2, lora_rank=4, seed=0)
    lora_before = {n: t.clone() for n, t in model.adapter_state_dict().items()}
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(rows))
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, t in model.adapter_state_dict().items() if not torch.equal(t, lora_before[n])]
    assert any("lora_B" in n for n in changed)  # the LoRA factors trained (B starts at zero)
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    model.save_pretrained(tmp_path / "adapter")
    back = LoraWrapperRoberta.from_pretrained(tmp_path / "adapter")
    ids, mask = batch()
    assert torch.equal(outputs(back, ids, mask)[0], outputs(model.eval(), ids, mask)[0])
    assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["lora_rank"] == 4


# ----------------------------------------------------------------------------- export-peft names a base that loads
def test_export_peft_names_an_absolute_path_for_a_local_base(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from roberta_lora.adapters.peft import export_peft

    monkeypatch.chdir(tiny_model_dir.parent)
    model = LoraWrapperRoberta(model_id=tiny_model_dir.name, num_classes=2, head="roberta", seed=0)
    model.save_adapter(tmp_path / "ours")
    result = export_peft(tmp_path / "ours", tmp_path / "peft")
    recorded = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_model_dir.resolve()) and repr(recorded) in result["load_with"]


def test_export_peft_of_a_packaged_base_loads_with_auto_peft_model_from_a_hub_cache(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants
    from test_hub import add_to_cache

    from roberta_lora import sources
    from roberta_lora.adapters.peft import export_peft

    folder = sources.packaged_folder("all-MiniLM-L6-v2")
    if folder is None:
        pytest.skip("the packaged all-MiniLM-L6-v2 is not installed (the minilm extra)")
    peft = pytest.importorskip("peft")
    model = trained_model(folder, seed=2, num_classes=2, head="roberta", lora_rank=2)
    model.adapter_config.base_model = "all-MiniLM-L6-v2"  # as `--model all-MiniLM-L6-v2` records it
    model.save_adapter(tmp_path / "ours")
    export_peft(tmp_path / "ours", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    cache = tmp_path / "hf" / "hub"
    add_to_cache(cache, "sentence-transformers/all-MiniLM-L6-v2",
                 {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "peft")).eval()
    ids, mask = batch()
    with torch.no_grad():
        logits = theirs(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, outputs(model, ids, mask)[0], atol=1e-5, rtol=0)


def test_a_bert_qa_export_needs_get_base_model_in_peft_as_readme_says(tmp_path) -> None:
    """PEFT 0.21's PeftModelForQuestionAnswering drops token_type_ids; its wrapped model takes them."""
    from transformers import AutoModelForQuestionAnswering

    from roberta_lora.adapters.peft import export_peft
    from roberta_lora.model.toy import make_toy_encoder

    peft = pytest.importorskip("peft")
    base = make_toy_encoder(tmp_path / "bert", "bert")
    model = trained_model(base, seed=4, task_type="squad_v1", lora_rank=2)
    model.save_adapter(tmp_path / "ours")
    export_peft(tmp_path / "ours", tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(AutoModelForQuestionAnswering.from_pretrained(base),
                                            str(tmp_path / "peft")).eval()
    ids, mask = batch()
    ids = ids % 200 + 5  # within the toy BERT's vocabulary
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1  # question, then context
    with torch.no_grad():
        ours = model(ids, mask, token_type_ids=segments).start_logits
        through_peft = theirs(input_ids=ids, attention_mask=mask, token_type_ids=segments).start_logits
        through_base = theirs.get_base_model()(input_ids=ids, attention_mask=mask, token_type_ids=segments).start_logits
    torch.testing.assert_close(through_base, ours, atol=1e-5, rtol=0)
    if torch.allclose(through_peft, ours, atol=1e-5):
        pytest.fail("PEFT now passes token_type_ids on: drop the limitation from docs/guide/many-adapters.md (PEFT interop)")
