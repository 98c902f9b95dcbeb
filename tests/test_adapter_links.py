"""An adapter is its folder: a config or tensors file that is a symbolic link out of it is refused by every
loader (a link inside the folder, and a Hugging Face cache snapshot's links into its blobs, are fine)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.errors import AdapterError
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME, read_weights_header
from roberta_lora.model.wrapper import LoraWrapperRoberta

IDS = torch.tensor([[0, 5, 6, 7, 2]])


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0, label_names=["negative", "positive"])
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(1.0)
    return model.save_adapter(tmp_path_factory.mktemp("adapter") / "sst2")


def linked(adapter: Path, folder: Path, name: str, target: Path | str) -> Path:
    shutil.copytree(adapter, folder)
    (folder / name).unlink()
    os.symlink(target, folder / name)
    return folder


def loaders(tiny_model_dir: Path):
    yield "from_adapter", lambda d: LoraWrapperRoberta.from_adapter(d, model_id=str(tiny_model_dir))
    yield "load_adapter", lambda d: LoraWrapperRoberta(model_id=str(tiny_model_dir), label_names=["a", "b"]).load_adapter(d)
    yield "bank", lambda d: AdapterBank(LoraWrapperRoberta(model_id=str(tiny_model_dir))).load_adapter(d, "x")
    yield "inspect header", read_weights_header


@pytest.mark.parametrize("name", [WEIGHTS_NAME, CONFIG_NAME])
def test_a_file_linked_from_another_folder_is_refused_by_every_loader(adapter, tiny_model_dir, tmp_path, name) -> None:
    elsewhere = shutil.copytree(adapter, tmp_path / "elsewhere")
    folder = linked(adapter, tmp_path / "linked", name, elsewhere / name)
    for label, load in loaders(tiny_model_dir):
        with pytest.raises(AdapterError) as refused:
            load(folder)
        message = str(refused.value)
        assert "symbolic link" in message and str(folder / name) in message and "outside" in message, label


def test_a_relative_link_out_and_a_loop_are_refused(adapter, tiny_model_dir, tmp_path) -> None:
    shutil.copytree(adapter, tmp_path / "elsewhere")
    out = linked(adapter, tmp_path / "relative", WEIGHTS_NAME, f"../elsewhere/{WEIGHTS_NAME}")
    loop = linked(adapter, tmp_path / "loop", WEIGHTS_NAME, WEIGHTS_NAME)
    for folder in (out, loop):
        with pytest.raises(AdapterError, match="symbolic link"):
            LoraWrapperRoberta.from_adapter(folder, model_id=str(tiny_model_dir))


def test_a_link_inside_the_folder_loads(adapter, tiny_model_dir, tmp_path) -> None:
    folder = shutil.copytree(adapter, tmp_path / "inside")
    (folder / "store").mkdir()
    (folder / WEIGHTS_NAME).rename(folder / "store" / "tensors.safetensors")
    os.symlink("store/tensors.safetensors", folder / WEIGHTS_NAME)
    loaded = LoraWrapperRoberta.from_adapter(folder, model_id=str(tiny_model_dir)).eval()
    reference = LoraWrapperRoberta.from_adapter(adapter, model_id=str(tiny_model_dir)).eval()
    assert torch.equal(loaded(input_ids=IDS)["logits"], reference(input_ids=IDS)["logits"])


def test_a_hub_cache_snapshot_linking_into_its_blobs_loads(adapter, tiny_model_dir, tmp_path) -> None:
    repo = tmp_path / "models--user--sst2"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for index, name in enumerate((WEIGHTS_NAME, CONFIG_NAME)):
        shutil.copy2(adapter / name, repo / "blobs" / f"blob{index}")
        os.symlink(f"../../blobs/blob{index}", snapshot / name)
    loaded = LoraWrapperRoberta.from_adapter(snapshot, model_id=str(tiny_model_dir)).eval()
    reference = LoraWrapperRoberta.from_adapter(adapter, model_id=str(tiny_model_dir)).eval()
    assert torch.equal(loaded(input_ids=IDS)["logits"], reference(input_ids=IDS)["logits"])
    # ...but not into another repo's blobs
    other = tmp_path / "models--other--x" / "blobs"
    other.mkdir(parents=True)
    shutil.copy2(adapter / WEIGHTS_NAME, other / "blob")
    (snapshot / WEIGHTS_NAME).unlink()
    os.symlink(other / "blob", snapshot / WEIGHTS_NAME)
    with pytest.raises(AdapterError, match="symbolic link"):
        LoraWrapperRoberta.from_adapter(snapshot, model_id=str(tiny_model_dir))
