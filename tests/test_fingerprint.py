"""The base fingerprint: cheap (no copy of any weight), broad (every layer, not only the embeddings), stable
(a fixed value for fixed weights), and adapters written by 0.1 with the old fingerprint still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.profiler import ProfilerActivity, profile
from transformers import RobertaConfig

from roberta_lora.errors import AdapterError
from roberta_lora.model.adapter_files import base_fingerprint, legacy_base_fingerprint
from roberta_lora.model.config import CONFIG_NAME
from roberta_lora.model.families import build_encoder
from roberta_lora.model.wrapper import LoraWrapperRoberta


def changed_copy(source: Path, destination: Path, tensor: str, delta: float = 1e-3) -> Path:
    """A copy of the checkpoint `source` with one tensor shifted by `delta`."""
    shutil.copytree(source, destination)
    weights = load_file(str(destination / "model.safetensors"))
    weights[tensor] = weights[tensor] + delta
    save_file(weights, str(destination / "model.safetensors"), metadata={"format": "pt"})
    return destination


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0, label_names=["negative", "positive"])
    return model.save_adapter(tmp_path_factory.mktemp("adapter") / "sst2")


def with_fingerprint(adapter: Path, destination: Path, fingerprint: str) -> Path:
    shutil.copytree(adapter, destination)
    config = json.loads((destination / CONFIG_NAME).read_text())
    config["base_fingerprint"] = fingerprint
    (destination / CONFIG_NAME).write_text(json.dumps(config))
    return destination


def deterministic_encoder() -> torch.nn.Module:
    config = RobertaConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=20, type_vocab_size=1)
    encoder = build_encoder(config)
    with torch.no_grad():
        for index, (_, parameter) in enumerate(sorted(encoder.named_parameters())):
            parameter.copy_(torch.linspace(-1, 1, parameter.numel()).reshape(parameter.shape) * (index + 1) / 10)
    return encoder


def test_fingerprint_of_fixed_weights_never_changes() -> None:
    """Saved adapters carry it: a change to what it reads or how would refuse every adapter written before."""
    encoder = deterministic_encoder()
    assert base_fingerprint(encoder) == "v2-51f23588fa6e63ab"
    assert legacy_base_fingerprint(encoder) == "ad252d1b61b8525a"  # what 0.1 wrote for the same weights


def test_fingerprint_allocates_no_copy_of_any_weight() -> None:
    """The 0.1 fingerprint made a float64 copy of the embeddings (+298 MB at roberta-base size)."""
    config = RobertaConfig(vocab_size=20000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=130, type_vocab_size=1)
    encoder = build_encoder(config)  # a 5 MB word-embedding table

    def largest_allocation(function) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            function(encoder)
        return max([event.cpu_memory_usage for event in prof.key_averages()] + [0])

    assert largest_allocation(legacy_base_fingerprint) > 8 * 20000 * 64 * 0.9  # the check can see a copy
    assert largest_allocation(base_fingerprint) < 64 * 1024


@pytest.mark.parametrize("tensor", ["encoder.layer.1.output.LayerNorm.weight",
                                    "encoder.layer.1.attention.self.value.bias",
                                    "encoder.layer.0.intermediate.dense.bias"])
def test_bases_sharing_their_embeddings_are_told_apart(adapter, tiny_model_dir, tmp_path, tensor) -> None:
    other = changed_copy(tiny_model_dir, tmp_path / "other", tensor)
    ours, theirs = (LoraWrapperRoberta(model_id=str(path)) for path in (tiny_model_dir, other))
    assert legacy_base_fingerprint(ours.roberta) == legacy_base_fingerprint(theirs.roberta)  # 0.1 could not
    assert ours.adapter_config.base_fingerprint != theirs.adapter_config.base_fingerprint
    with pytest.raises(AdapterError, match="fingerprint"):
        LoraWrapperRoberta.from_adapter(adapter, model_id=str(other))


def test_linear_weights_are_left_out_so_a_quantized_base_matches(tiny_model_dir, tmp_path) -> None:
    other = changed_copy(tiny_model_dir, tmp_path / "other", "encoder.layer.0.attention.self.query.weight")
    ours, theirs = (LoraWrapperRoberta(model_id=str(path)) for path in (tiny_model_dir, other))
    assert ours.adapter_config.base_fingerprint == theirs.adapter_config.base_fingerprint


def test_fingerprint_is_taken_before_anything_trains(tiny_model_dir) -> None:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), label_names=["a", "b"])
    first = model.adapter_config.base_fingerprint
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    assert model.adapter_config.base_fingerprint == first == base_fingerprint(
        LoraWrapperRoberta(model_id=str(tiny_model_dir)).roberta)


def test_adapter_of_version_0_1_loads_on_its_base(adapter, tiny_model_dir, tmp_path) -> None:
    base = LoraWrapperRoberta(model_id=str(tiny_model_dir)).roberta
    old = with_fingerprint(adapter, tmp_path / "old", legacy_base_fingerprint(base))
    loaded = LoraWrapperRoberta.from_adapter(old, model_id=str(tiny_model_dir))
    reference = LoraWrapperRoberta.from_adapter(adapter, model_id=str(tiny_model_dir))
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    assert torch.equal(loaded.eval()(input_ids=ids)["logits"], reference.eval()(input_ids=ids)["logits"])
    resaved = loaded.save_adapter(tmp_path / "resaved")  # saved again: the current fingerprint
    assert json.loads((resaved / CONFIG_NAME).read_text())["base_fingerprint"].startswith("v2-")


def test_adapter_of_version_0_1_on_another_base_is_refused(adapter, tiny_model_dir, tmp_path) -> None:
    other = changed_copy(tiny_model_dir, tmp_path / "other", "embeddings.word_embeddings.weight")
    old = with_fingerprint(adapter, tmp_path / "old", legacy_base_fingerprint(
        LoraWrapperRoberta(model_id=str(tiny_model_dir)).roberta))
    with pytest.raises(AdapterError, match="fingerprint"):
        LoraWrapperRoberta.from_adapter(old, model_id=str(other))


def test_old_fingerprint_is_read_from_the_base_values_after_embeddings_trained(tiny_model_dir, tmp_path) -> None:
    """A model whose embeddings trained (or were loaded from an adapter) still checks a 0.1 adapter against its
    base: the embedding values it started from are kept."""
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), label_names=["a", "b"], train_embeddings=True)
    legacy = legacy_base_fingerprint(model.roberta)
    adapter = model.save_adapter(tmp_path / "adapter")
    with torch.no_grad():
        model.roberta.embeddings.word_embeddings.weight.add_(1.0)
    old = with_fingerprint(adapter, tmp_path / "old", legacy)
    model.load_adapter(old)  # no AdapterError


@pytest.mark.parametrize("value", ["v2-" + "0" * 15, "v3-" + "0" * 16, "V2-" + "0" * 16, "0" * 17, "g" * 16])
def test_malformed_fingerprints_are_refused(adapter, tmp_path, tiny_model_dir, value) -> None:
    bad = with_fingerprint(adapter, tmp_path / "bad", value)
    with pytest.raises(Exception, match="base_fingerprint"):
        LoraWrapperRoberta.from_adapter(bad, model_id=str(tiny_model_dir))
