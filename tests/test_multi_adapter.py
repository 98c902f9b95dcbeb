"""Several adapters on one base: switching, disabling, deleting and mixed-task batches, all exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import RobertaModel

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.adapters.mixed import MultiAdapterPredictor
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.lora.injection import lora_layers
from roberta_lora.model.config import CONFIG_NAME
from roberta_lora.model.wrapper import LoraWrapperRoberta

# name -> how the adapter is built: different tasks, heads, ranks, targets and train_* flags.
ADAPTERS = {
    "sst2": {"num_classes": 2, "label_names": ["negative", "positive"], "task": "sst2"},
    "mnli": {"num_classes": 3, "head": "roberta", "targets": "all-linear", "lora_rank": 4, "lora_alpha": 16,
             "train_embeddings": True, "label_names": ["entailment", "neutral", "contradiction"], "task": "mnli"},
    "stsb": {"num_classes": 1, "targets": "query,key", "lora_rank": 2, "train_biases": False, "task": "stsb"},
    "squad": {"task_type": "squad_v2", "lora_rank": 6, "train_layer_norms": False, "task": "squad_v2"},
    "probe": {"num_classes": 2, "method": "head"},
    "full": {"num_classes": 2, "method": "full"},  # replaces every base weight
}


def trained_model(base_dir: Path, seed: int, **kwargs) -> LoraWrapperRoberta:
    """A model whose every adapter tensor differs from its initial value (as after training)."""
    model = LoraWrapperRoberta(model_id=str(base_dir), seed=0, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.adapter_state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    for seed, (name, kwargs) in enumerate(ADAPTERS.items()):
        trained_model(tiny_model_dir, seed + 10, **kwargs).save_adapter(root / name)
    return {name: root / name for name in ADAPTERS}


@pytest.fixture(scope="module")
def alone(adapter_dirs) -> dict[str, LoraWrapperRoberta]:
    """Each adapter loaded alone, the reference every multi-adapter result must equal."""
    return {name: LoraWrapperRoberta.from_adapter(d) for name, d in adapter_dirs.items()}


def multi_model(adapter_dirs, first: str = "sst2") -> AdapterBank:
    bank = AdapterBank.from_adapter(adapter_dirs[first])
    for name, directory in adapter_dirs.items():
        if name != first:
            bank.load_adapter(directory, name)
    return bank


def batch(length: int = 9):
    ids = torch.randint(3, 400, (3, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def outputs(model, ids, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(ids, mask)
    return [out.logits] if model.task_type == "glue" else [out.start_logits, out.end_logits]


def assert_same(model, reference, ids, mask) -> None:
    for ours, theirs in zip(outputs(model, ids, mask), outputs(reference, ids, mask), strict=True):
        assert torch.equal(ours, theirs)


def test_every_active_adapter_equals_loading_it_alone(adapter_dirs, alone) -> None:
    model = multi_model(adapter_dirs)
    assert model.adapters == ["default", "mnli", "stsb", "squad", "probe", "full"]
    assert model.active_adapter == "default"
    ids, mask = batch()
    # Visit every adapter twice, in an order that changes rank, targets, head and task type each time.
    order = ["mnli", "squad", "full", "stsb", "probe", "default", "squad", "mnli", "full", "default", "stsb", "probe"]
    for name in order:
        model.set_adapter(name)
        assert model.active_adapter == name
        assert_same(model, alone["sst2" if name == "default" else name], ids, mask)
    assert model.task_type == "glue" and model.adapter_config.head == "light"


def test_the_single_adapter_model_loads_same_shaped_adapters_and_points_to_the_bank(adapter_dirs, alone) -> None:
    model = LoraWrapperRoberta(model_id=alone["sst2"].adapter_config.base_model, num_classes=2).eval()
    assert model.load_adapter(adapter_dirs["sst2"]).task == "sst2"
    assert_same(model, alone["sst2"], *batch())
    with pytest.raises(AdapterError, match="num_classes: adapter 3 vs model 2.*AdapterBank"):
        model.load_adapter(adapter_dirs["mnli"])
    with pytest.raises(ConfigError, match="holds one adapter.*AdapterBank"):
        model.load_adapter(adapter_dirs["mnli"], "mnli")


def test_switching_keeps_the_outgoing_adapters_progress(adapter_dirs, alone) -> None:
    model = multi_model(adapter_dirs)
    with torch.no_grad():  # a "training step" on the active adapter
        model.model.classifier.out_proj.bias.add_(1.0)
        next(iter(lora_layers(model).values())).lora_B.weight.mul_(2.0)
    ids, mask = batch()
    trained = outputs(model, ids, mask)
    model.set_adapter("mnli")
    assert_same(model, alone["mnli"], ids, mask)
    model.set_adapter("default")
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, ids, mask), trained, strict=True))


def test_switching_does_not_move_the_global_rng(adapter_dirs) -> None:
    model = multi_model(adapter_dirs)
    state = torch.get_rng_state()
    model.set_adapter("mnli")  # rebuilds LoRA layers and the head
    model.set_adapter("squad")
    assert torch.equal(torch.get_rng_state(), state)


def test_a_merged_model_stays_merged_across_switches(adapter_dirs, alone) -> None:
    model = multi_model(adapter_dirs)
    ids, mask = batch()
    model.merge_adapter()
    model.set_adapter("mnli")
    assert model.merged
    torch.testing.assert_close(outputs(model, ids, mask)[0], outputs(alone["mnli"], ids, mask)[0], atol=1e-5, rtol=0)
    model.unmerge_adapter()
    assert_same(model, alone["mnli"], ids, mask)


def test_disable_adapter_runs_the_plain_base_then_restores_everything(tiny_model_dir, adapter_dirs, alone) -> None:
    plain = RobertaModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).eval()
    model = multi_model(adapter_dirs)
    ids, mask = batch()
    model.set_adapter("full")
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model.model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state,
                           plain(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert_same(model, alone["full"], ids, mask)
    model.set_adapter("mnli")  # trains embeddings, biases and LayerNorms: all must go back to the base's
    parameters = dict(model.named_parameters())
    model.merge_adapter()
    with model.disable_adapter():
        assert not lora_layers(model)
        with torch.no_grad():
            hidden = model.model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
            expected = plain(input_ids=ids, attention_mask=mask).last_hidden_state
            assert torch.equal(hidden, expected)
            assert torch.equal(model(ids, mask).logits, model.model.classifier(expected))  # the active head still applies
        with pytest.raises(ConfigError, match="disable_adapter"):
            model.set_adapter("default")
    assert model.merged
    model.unmerge_adapter()
    assert_same(model, alone["mnli"], ids, mask)
    # The same parameter objects come back, so an optimizer built before keeps working.
    assert all(p is parameters[n] for n, p in model.named_parameters())


def test_delete_adapter(adapter_dirs, alone) -> None:
    model = multi_model(adapter_dirs)
    model.delete_adapter("mnli")
    assert "mnli" not in model.adapters
    with pytest.raises(ConfigError, match="no adapter named 'mnli'.*loaded adapters"):
        model.set_adapter("mnli")
    with pytest.raises(ConfigError, match="is active; call set_adapter"):
        model.delete_adapter("default")
    model.set_adapter("squad")
    assert_same(model, alone["squad"], *batch())
    model.load_adapter(adapter_dirs["mnli"], "mnli")  # the name is free again
    model.set_adapter("mnli")
    assert_same(model, alone["mnli"], *batch())


def test_named_loading_checks_names_files_and_base(adapter_dirs, tmp_path) -> None:
    model = multi_model(adapter_dirs)
    with pytest.raises(ConfigError, match="already loaded"):
        model.load_adapter(adapter_dirs["mnli"], "mnli")
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in adapter_dirs["stsb"].iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["lora_rank"] = 3  # the tensors have rank 2
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=r"lora_A.weight has shape \(2, 32\).*\(3, 32\)"):
        model.load_adapter(broken, "broken")
    config["lora_rank"], config["base_fingerprint"] = 2, "0" * 16
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="allow_base_mismatch"):
        model.load_adapter(broken, "broken")
    assert "broken" not in model.adapters


def test_save_an_inactive_adapter(adapter_dirs, alone, tmp_path) -> None:
    model = multi_model(adapter_dirs)
    model.save_adapter(tmp_path / "mnli", adapter_name="mnli")
    assert_same(LoraWrapperRoberta.from_adapter(tmp_path / "mnli"), alone["mnli"], *batch())


def test_mixed_task_batch_equals_each_example_with_its_adapter_alone(adapter_dirs, alone, tiny_tokenizer) -> None:
    model = multi_model(adapter_dirs)
    model.set_adapter("stsb")
    texts = ["The movie was great.", ("A cat sat.", "The dog slept on the mat."), ("Is it cold?", "It is colder."),
             ("Who wrote it?", "The author wrote it in Paris."), "A boring film.", ("Two sentences.", "Paraphrases.")]
    names = ["default", "mnli", "stsb", "squad", "default", "mnli"]
    encoded = tiny_tokenizer.pad([tiny_tokenizer(*(t if isinstance(t, tuple) else (t,))) for t in texts],
                                 return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    results = MultiAdapterPredictor(model).predict(ids, mask, names)
    assert model.active_adapter == "stsb"  # restored
    for row, (name, result) in enumerate(zip(names, results, strict=True)):
        reference = alone["sst2" if name == "default" else name]
        assert result["adapter"] == name and result["task"] == reference.adapter_config.task
        # Exactly: the single-adapter model on the same examples with the same padding.
        rows = [i for i, n in enumerate(names) if n == name]
        same_batch = outputs(reference, ids[rows], mask[rows])
        # Within float rounding: the example alone, padded or not (a one-row batch may use other kernels).
        length = int(mask[row].sum())
        padded = outputs(reference, ids[row:row + 1], mask[row:row + 1])
        unpadded = outputs(reference, ids[row:row + 1, :length], mask[row:row + 1, :length])
        ours = [result["logits"]] if "logits" in result else [result["start_logits"], result["end_logits"]]
        for mine, batched, alone_padded, short in zip(ours, same_batch, padded, unpadded, strict=True):
            assert torch.equal(mine, batched[rows.index(row)]), name
            torch.testing.assert_close(mine, alone_padded[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(mine if "logits" in result else mine[:length], short[0], atol=1e-5, rtol=0)
    assert results[0]["prediction"] in ("negative", "positive")
    assert isinstance(results[2]["prediction"], float)
    assert results[3]["start_logits"].shape == (ids.size(1),)
    by_text = MultiAdapterPredictor(model).predict_texts(tiny_tokenizer, texts, names)
    assert [r["adapter"] for r in by_text] == names
    assert all(torch.equal(a["logits"], b["logits"]) for a, b in zip(by_text, results, strict=True) if "logits" in a)


def test_mixed_batch_rejects_unknown_adapters_and_wrong_lengths(adapter_dirs) -> None:
    predictor = MultiAdapterPredictor(multi_model(adapter_dirs))
    ids, mask = batch()
    with pytest.raises(ConfigError, match="no adapter named 'qqp'"):
        predictor.predict(ids, mask, ["default", "qqp", "default"])
    with pytest.raises(ConfigError, match="2 adapter names for a batch of 3"):
        predictor.predict(ids, mask, ["default", "mnli"])
