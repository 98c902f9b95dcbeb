"""LoraWrapperRoberta: injection, freezing, heads, losses, determinism, sizes."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import RobertaModel

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.errors import ConfigError
from roberta_lora.lora.attention import LoraRobertaSelfAttention
from roberta_lora.lora.injection import lora_layers
from roberta_lora.lora.layer import LoraLinear
from roberta_lora.model.toy import roberta_base_config, toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta


def inputs(batch: int = 3, length: int = 9, vocab: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_output_equals_base_model_at_init(attn: str) -> None:
    torch.manual_seed(0)
    config = toy_config(400)
    config._attn_implementation = attn
    base = RobertaModel(config, add_pooling_layer=False).eval()
    reference = copy.deepcopy(base)
    model = LoraWrapperRoberta(model_id=base, lora_dropout=0.0).eval()
    assert all(isinstance(layer.attention.self, LoraRobertaSelfAttention) for layer in model.roberta.encoder.layer)
    ids, mask = inputs()
    with torch.no_grad():
        ours = model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours, theirs)


def test_eager_and_sdpa_agree_with_trained_lora() -> None:
    outputs = []
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = LoraWrapperRoberta(model_id=toy_config(400), seed=0, attn_implementation=attn, lora_dropout=0.0).eval()
        for layer in lora_layers(model).values():
            torch.nn.init.normal_(layer.lora_B.weight, generator=torch.Generator().manual_seed(5))
        ids, mask = inputs()
        with torch.no_grad():
            outputs.append(model(ids, mask).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def test_only_intended_parameters_get_gradients_and_base_does_not_move() -> None:
    torch.manual_seed(0)
    model = LoraWrapperRoberta(model_id=toy_config(400), seed=0)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    ids, mask = inputs()
    model(ids, mask, labels=torch.tensor([0, 1, 1])).loss.backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # Exactly: LoRA factors, Linear biases, LayerNorms, head.
    for name in trainable:
        assert (
            ".lora_A." in name or ".lora_B." in name or name.endswith(".bias") or "LayerNorm" in name
            or name.startswith("classifier.")
        ), name
    assert not any("embeddings.word_embeddings" in n or n.endswith("query.base_layer.weight") for n in trainable)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), f"{name} moved"


def test_flags_change_what_trains() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), train_biases=False, train_layer_norms=False,
                               train_embeddings=True, seed=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "roberta.embeddings.word_embeddings.weight" in names
    assert not any(n.endswith("base_layer.bias") or "LayerNorm" in n for n in names)


def test_all_linear_targets_wrap_six_layers_per_block_and_never_the_head() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), targets="all-linear", head="roberta", seed=0)
    assert len(model.replaced_modules) == 6 * 2
    assert not isinstance(model.classifier.dense, LoraLinear)
    assert isinstance(model.roberta.encoder.layer[0].output.dense, LoraLinear)
    assert isinstance(model.roberta.encoder.layer[1].attention.self.key, LoraLinear)


def test_unknown_target_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown LoRA target.*'dense'.*query"):
        LoraWrapperRoberta(model_id=toy_config(400), targets=["dense"])


def test_building_is_deterministic_under_a_seed() -> None:
    config = toy_config(400)
    torch.manual_seed(0)
    base = RobertaModel(config, add_pooling_layer=False)
    first = LoraWrapperRoberta(model_id=copy.deepcopy(base), seed=7).state_dict()
    second = LoraWrapperRoberta(model_id=copy.deepcopy(base), seed=7).state_dict()
    third = LoraWrapperRoberta(model_id=copy.deepcopy(base), seed=8).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["roberta.encoder.layer.0.attention.self.query.lora_A.weight"],
                           third["roberta.encoder.layer.0.attention.self.query.lora_A.weight"])


def test_regression_head_uses_mse_on_matching_shapes() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), num_classes=1, seed=0)
    ids, mask = inputs()
    labels = torch.tensor([0.5, 2.0, 4.5])
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (3, 1)
    expected = torch.nn.functional.mse_loss(out.logits[:, 0], labels)
    assert torch.equal(out.loss, expected)
    with pytest.raises(ConfigError, match="shape"):
        model(ids, mask, labels=torch.zeros(3, 2))


def test_roberta_head_is_transformers_classification_head() -> None:
    from transformers.models.roberta.modeling_roberta import RobertaClassificationHead

    model = LoraWrapperRoberta(model_id=toy_config(400), num_classes=3, head="roberta", seed=0)
    assert isinstance(model.classifier, RobertaClassificationHead)
    ids, mask = inputs()
    assert model(ids, mask).logits.shape == (3, 3)


@pytest.mark.parametrize("task_type", ["squad_v1", "squad_v2"])
def test_squad_head_gives_start_end_logits_and_loss(task_type: str) -> None:
    model = LoraWrapperRoberta(task_type=task_type, model_id=toy_config(400), seed=0)
    assert tuple(model.qa_outputs.weight.shape) == (2, 32)
    ids, mask = inputs()
    out = model(ids, mask, start_positions=torch.tensor([0, 2, 3]), end_positions=torch.tensor([0, 4, 50]))
    assert out.start_logits.shape == (3, 9) and out.end_logits.shape == (3, 9)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_roberta_base_counts_and_adapter_size(tmp_path) -> None:
    torch.manual_seed(0)
    model = LoraWrapperRoberta(model_id=roberta_base_config(), seed=0)
    trainable, total = model.parameter_counts()
    # LoRA 12*2*(768*8*2) + biases/LayerNorms 12*9984 + embedding LN 1536 + head 1536 + 1538.
    assert trainable == 419_330
    assert 0.0033 < trainable / total < 0.0035
    model.save_adapter(tmp_path)
    size = (tmp_path / "adapter.safetensors").stat().st_size
    assert 1_650_000 < size < 1_750_000, size


def test_counts_and_summary_match_a_count_by_hand() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), seed=0)  # hidden 32, FFN 64, 2 layers, r=8 on q,v
    lora = 2 * 2 * (8 * 32 + 32 * 8)
    biases_and_norms = 2 * ((4 * 32 + 64 + 32) + 2 * (32 + 32)) + (32 + 32)  # per layer, then embedding LN
    head = (32 + 32) + (32 * 2 + 2)  # light head: LayerNorm, Linear(32, 2)
    base = sum(p.numel() for p in RobertaModel(toy_config(400), add_pooling_layer=False).parameters())
    trainable, total = lora + biases_and_norms + head, base + lora + head
    assert model.parameter_counts() == (trainable, total) == (2946, total)
    assert model.trainable_parameters_summary() == (
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")


def modes(model: torch.nn.Module) -> set[bool]:
    return {module.training for module in model.modules()}


def test_every_submodule_follows_the_wrappers_mode(tiny_model_dir, tmp_path) -> None:
    # from_pretrained returns its encoder in eval mode; the wrapper must not keep that mix.
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    assert model.training and modes(model) == {True}
    model.save_adapter(tmp_path / "a")
    loaded = LoraWrapperRoberta.from_adapter(tmp_path / "a")
    assert not loaded.training and modes(loaded) == {False}
    loaded.train()
    loaded.load_adapter(tmp_path / "a")
    assert modes(loaded) == {True}
    bank = AdapterBank(LoraWrapperRoberta.from_adapter(tmp_path / "a"))
    LoraWrapperRoberta(model_id=str(tiny_model_dir), task_type="squad_v2", lora_rank=2, seed=1).save_adapter(tmp_path / "b")
    bank.load_adapter(tmp_path / "b", "squad")
    bank.set_adapter("squad")  # new LoRA layers and a new head, built in train mode by torch
    assert modes(bank) == {False}


def test_load_adapter_takes_the_dropout_of_the_loaded_config(tiny_model_dir, tmp_path) -> None:
    LoraWrapperRoberta(model_id=str(tiny_model_dir), lora_dropout=0.3, head_dropout=0.2, seed=0).save_adapter(tmp_path)
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), lora_dropout=0.05, head_dropout=0.0, seed=1)
    model.load_adapter(tmp_path)
    assert (model.adapter_config.lora_dropout, model.adapter_config.head_dropout) == (0.3, 0.2)
    assert {layer.dropout for layer in lora_layers(model).values()} == {0.3}
    assert {m.p for m in model.classifier.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}


def test_training_a_merged_model_is_refused(tiny_model_dir) -> None:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    ids, mask = inputs()
    model.merge_adapter()
    with pytest.raises(ConfigError, match="merged.*no gradient.*unmerge_adapter"):
        model(ids, mask, labels=torch.tensor([0, 1, 0]))
    with torch.no_grad():
        model(ids, mask)  # inference in train mode is fine
    model.eval()(ids, mask)  # and so is eval mode with autograd on
    model.train().unmerge_adapter()
    model(ids, mask, labels=torch.tensor([0, 1, 0])).loss.backward()
    assert all(layer.lora_B.weight.grad is not None for layer in lora_layers(model).values())


def test_missing_base_model_offline_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--model"):
        LoraWrapperRoberta(model_id=str(tmp_path / "no-such-model"))


def test_head_and_full_methods(tiny_model_dir, tmp_path) -> None:
    head_only = LoraWrapperRoberta(model_id=str(tiny_model_dir), method="head", seed=0)
    assert head_only.replaced_modules == [] and not lora_layers(head_only)
    assert {n for n, p in head_only.named_parameters() if p.requires_grad} == {
        n for n, _ in head_only.named_parameters() if n.startswith("classifier.")
    }
    full = LoraWrapperRoberta(model_id=str(tiny_model_dir), method="full", seed=0)
    assert all(p.requires_grad for p in full.parameters())
    head_only.save_adapter(tmp_path)
    restored = LoraWrapperRoberta.from_adapter(tmp_path)
    assert restored.adapter_config.method == "head"
    ids, mask = inputs()
    with torch.no_grad():
        assert torch.equal(restored(ids, mask).logits, head_only.eval()(ids, mask).logits)
