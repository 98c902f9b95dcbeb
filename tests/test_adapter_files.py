"""Saving and loading adapters: round trips, atomicity, and clear errors on bad files."""

from __future__ import annotations

import copy
import json
import re
import struct

import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_safetensors_bytes
from transformers import RobertaModel

from roberta_lora.errors import AdapterError
from roberta_lora.fileio import read_safetensors_header, safetensors_header, sorted_safetensors_metadata
from roberta_lora.lora.injection import lora_layers
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME, adapter_size_bytes
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta


def trained_model(base_dir, **kwargs) -> LoraWrapperRoberta:
    """A model whose LoRA, biases and head differ from their initial values."""
    model = LoraWrapperRoberta(model_id=str(base_dir), seed=0, **kwargs)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def drop_digest(directory) -> None:
    """Remove weights_sha256 from the config, as in a hand-made file, so the tensor checks are reached."""
    config = json.loads((directory / CONFIG_NAME).read_text())
    del config["weights_sha256"]
    (directory / CONFIG_NAME).write_text(json.dumps(config))


def batch(vocab: int = 400):
    ids = torch.randint(3, vocab, (2, 8), generator=torch.Generator().manual_seed(2))
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 2, "label_names": ["neg", "pos"]},
    {"num_classes": 1},
    {"num_classes": 3, "head": "roberta", "targets": "all-linear", "lora_rank": 2, "lora_alpha": 16},
    {"task_type": "squad_v2"},
])
def test_save_load_gives_identical_logits(tiny_model_dir, tmp_path, kwargs) -> None:
    model = trained_model(tiny_model_dir, **kwargs)
    model.save_adapter(tmp_path / "adapter", metrics={"accuracy": 0.5})
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    restored = LoraWrapperRoberta.from_adapter(tmp_path / "adapter")
    ids, mask = batch()
    with torch.no_grad():
        before, after = model(ids, mask), restored(ids, mask)
    for key in before.keys():
        assert torch.equal(before[key], after[key]), key
    assert restored.adapter_config.metrics == {"accuracy": 0.5}
    assert restored.adapter_config.label_names == kwargs.get("label_names", [])


def test_the_same_adapter_saves_to_the_same_bytes(tiny_model_dir, tmp_path) -> None:
    """safetensors writes its metadata from a hash map; saves sort it, so equal content is equal bytes
    (and an equal weights_sha256), whatever order the library picked."""
    model = trained_model(tiny_model_dir, num_classes=2)
    saved = []
    for i in range(6):
        model.save_adapter(tmp_path / f"a{i}")
        saved.append(((tmp_path / f"a{i}" / WEIGHTS_NAME).read_bytes(), (tmp_path / f"a{i}" / CONFIG_NAME).read_bytes()))
    assert all(s == saved[0] for s in saved[1:])
    header = read_safetensors_header(tmp_path / "a0" / WEIGHTS_NAME)
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    restored = LoraWrapperRoberta.from_adapter(tmp_path / "a0")  # the digest and the tensors still check
    assert restored.adapter_config.lora_alpha == model.adapter_config.lora_alpha


@pytest.mark.parametrize("metadata", [
    {"b": "2", "a": "1", "format": "pt"},
    {"z": "naïve ☃", "a": "\u00e9 \"quoted\" \\ back", "c": "\x01\t", "format": "pt"},  # escapes as serde writes them
    {"format": "pt"},
    None,
])
def test_sorting_the_metadata_keeps_a_valid_file_with_the_same_content(metadata) -> None:
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}
    payload = save_safetensors_bytes(tensors, metadata=metadata)
    fixed = sorted_safetensors_metadata(payload)
    start = 8 + struct.unpack("<Q", payload[:8])[0]  # only the header's bytes may change
    assert len(fixed) == len(payload) and fixed[:8] == payload[:8] and fixed[start:] == payload[start:]
    loaded = load_safetensors_bytes(fixed)
    assert sorted(loaded) == sorted(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    header = safetensors_header(fixed)
    assert header.get("__metadata__", {}) == (metadata or {})
    assert list(header.get("__metadata__", {})) == sorted(metadata or {})


@pytest.mark.parametrize("payload", [b"", b"\x00" * 7, b"\xff" * 16, b"\x04\x00\x00\x00\x00\x00\x00\x00[1] ",
                                     b"\x02\x00\x00\x00\x00\x00\x00\x00{}"])
def test_sorting_the_metadata_leaves_what_is_not_a_safetensors_file_alone(payload) -> None:
    assert sorted_safetensors_metadata(payload) == payload


def test_file_holds_only_trainable_tensors_and_config_fields(tiny_model_dir, tmp_path) -> None:
    model = trained_model(tiny_model_dir)
    model.save_adapter(tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    for key in ("task_type", "num_classes", "label_names", "lora_rank", "lora_alpha", "targets", "train_biases",
                "train_layer_norms", "train_embeddings", "head", "base_model", "base_fingerprint", "package_version",
                "weights_sha256"):
        assert key in config, key
    assert config["base_model"] == str(tiny_model_dir) and re.fullmatch(r"v2-[0-9a-f]{16}", config["base_fingerprint"])
    assert adapter_size_bytes(tmp_path) == sum(p.stat().st_size for p in tmp_path.iterdir())


def test_load_adapter_onto_existing_model(tiny_model_dir, tmp_path) -> None:
    model = trained_model(tiny_model_dir)
    model.save_adapter(tmp_path)
    fresh = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=1).eval()
    fresh.load_adapter(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask).logits, model(ids, mask).logits)


def test_merged_model_loads_and_saves_consistently(tiny_model_dir, tmp_path) -> None:
    model = trained_model(tiny_model_dir)
    ids, mask = batch()
    with torch.no_grad():
        unmerged = model(ids, mask).logits
        model.merge_adapter()
        model.merge_adapter()
        torch.testing.assert_close(model(ids, mask).logits, unmerged, atol=1e-5, rtol=0)
    model.save_adapter(tmp_path)  # LoRA factors are saved, not the merged base
    model.unmerge_adapter()
    restored = LoraWrapperRoberta.from_adapter(tmp_path)
    with torch.no_grad():
        assert torch.equal(restored(ids, mask).logits, unmerged)
    assert all(not layer.merged for layer in lora_layers(model).values())


def test_corrupted_weights_are_refused(tiny_model_dir, tmp_path) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    data = bytearray((tmp_path / WEIGHTS_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="sha256"):
        LoraWrapperRoberta.from_adapter(tmp_path)


def test_truncated_file_without_digest_is_refused(tiny_model_dir, tmp_path) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    drop_digest(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes((tmp_path / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(AdapterError, match="not a valid safetensors"):
        LoraWrapperRoberta.from_adapter(tmp_path)


def test_wrong_shape_is_refused(tiny_model_dir, tmp_path) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    name = "roberta.encoder.layer.0.attention.self.query.lora_A.weight"
    tensors[name] = torch.zeros(5, 32)
    save_file(tensors, tmp_path / WEIGHTS_NAME)
    drop_digest(tmp_path)
    with pytest.raises(AdapterError, match=r"query.lora_A.weight has shape \(5, 32\).*\(8, 32\)"):
        LoraWrapperRoberta.from_adapter(tmp_path)


def test_missing_and_unexpected_keys_are_named(tiny_model_dir, tmp_path) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    tensors.pop("classifier.out_proj.weight")
    tensors["surprise"] = torch.zeros(1)
    save_file(tensors, tmp_path / WEIGHTS_NAME)
    drop_digest(tmp_path)
    with pytest.raises(AdapterError, match=r"missing tensors \['classifier.out_proj.weight'\].*unexpected.*surprise"):
        LoraWrapperRoberta.from_adapter(tmp_path)


def test_adapter_for_another_base_is_refused_unless_overridden(tiny_model_dir, tmp_path, caplog) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    torch.manual_seed(123)
    other_base = RobertaModel(toy_config(400), add_pooling_layer=False)
    with pytest.raises(AdapterError, match=r"trained on base .*fingerprint.*but this model's base.*allow_base_mismatch"):
        LoraWrapperRoberta.from_adapter(tmp_path, model_id=copy.deepcopy(other_base))
    model = LoraWrapperRoberta.from_adapter(tmp_path, model_id=other_base, allow_base_mismatch=True)
    assert "loading anyway" in caplog.text
    assert model.adapter_config.lora_rank == 8


def test_adapter_for_another_task_shape_is_refused(tiny_model_dir, tmp_path) -> None:
    trained_model(tiny_model_dir, num_classes=3).save_adapter(tmp_path)
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2)
    with pytest.raises(AdapterError, match="num_classes: adapter 3 vs model 2"):
        model.load_adapter(tmp_path)


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"task_type": "glue", "lora_rank": "8"}', "wrong value types"),
    (b'{"task_type": "translation"}', "task_type"),
    (b'{"evil": 1}', "unknown keys"),
])
def test_invalid_config_is_refused(tiny_model_dir, tmp_path, content, match) -> None:
    trained_model(tiny_model_dir).save_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).write_bytes(content)
    with pytest.raises(AdapterError, match=match):
        LoraWrapperRoberta.from_adapter(tmp_path)


def test_missing_folder_is_refused(tmp_path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        LoraWrapperRoberta.from_adapter(tmp_path / "nope")


def test_interrupted_save_keeps_the_previous_adapter(tiny_model_dir, tmp_path, monkeypatch) -> None:
    model = trained_model(tiny_model_dir)
    model.save_adapter(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    import roberta_lora.fileio as fileio

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_adapter(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "no temp files, old files intact"
    LoraWrapperRoberta.from_adapter(tmp_path)  # still loads
