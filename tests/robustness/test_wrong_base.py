"""An adapter loaded on another base model is refused, naming both bases; the override loads it and warns.

The fingerprint hashes samples of the base's embeddings, LayerNorms and biases (model.adapter_files.base_fingerprint), so it follows
the weights, not the path: the same checkpoint copied elsewhere is accepted, a different one is
refused however it is named.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.adapters.warm_start import warm_start_from_adapter
from roberta_lora.cli.main import main
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.model.config import CONFIG_NAME
from roberta_lora.model.toy import DEFAULT_CORPUS, make_toy_roberta
from roberta_lora.model.wrapper import LoraWrapperRoberta


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> Path:
    """Same architecture and tokenizer as tiny_model_dir, other random weights."""
    return make_toy_roberta(tmp_path_factory.mktemp("other-base"), corpus=DEFAULT_CORPUS, seed=1)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0, label_names=["negative", "positive"], task="sst2")
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(1.0)
    return model.save_adapter(tmp_path_factory.mktemp("adapter") / "sst2")


def fingerprint(directory: Path) -> str:
    return json.loads((directory / CONFIG_NAME).read_text())["base_fingerprint"]


def assert_names_both(message: str, adapter: Path, trained_on: Path, loaded_on: Path) -> None:
    model = LoraWrapperRoberta(model_id=str(loaded_on))
    for part in (str(adapter), str(trained_on), fingerprint(adapter), str(loaded_on),
                 model.adapter_config.base_fingerprint, "allow_base_mismatch"):
        assert part in message, f"{part!r} missing from: {message}"


def test_from_adapter_on_another_base_is_refused_naming_both(adapter, tiny_model_dir, other_base) -> None:
    with pytest.raises(AdapterError) as refused:
        LoraWrapperRoberta.from_adapter(adapter, model_id=str(other_base))
    assert_names_both(str(refused.value), adapter, tiny_model_dir, other_base)


def test_load_adapter_and_named_loading_on_another_base_are_refused(adapter, tiny_model_dir, other_base) -> None:
    model = LoraWrapperRoberta(model_id=str(other_base), label_names=["negative", "positive"])
    before = {name: tensor.clone() for name, tensor in model.adapter_state_dict().items()}
    with pytest.raises(AdapterError) as refused:
        model.load_adapter(adapter)
    assert_names_both(str(refused.value), adapter, tiny_model_dir, other_base)
    bank = AdapterBank(model)
    with pytest.raises(AdapterError, match="allow_base_mismatch"):
        bank.load_adapter(adapter, "sst2")
    assert bank.adapters == ["default"]
    assert all(torch.equal(before[n], t) for n, t in model.adapter_state_dict().items()), "refused, yet changed"


def test_override_loads_and_warns_naming_both(adapter, tiny_model_dir, other_base, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="roberta_lora"):
        model = LoraWrapperRoberta.from_adapter(adapter, model_id=str(other_base), allow_base_mismatch=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "loading anyway" in warnings[0]
    assert fingerprint(adapter) in warnings[0] and str(other_base) in warnings[0] and str(tiny_model_dir) in warnings[0]
    assert model.classifier.out_proj.bias.min() >= 1.0 - 1e-6  # the adapter's tensors did load
    assert model.adapter_config.base_model == str(other_base)  # and the model says which base it runs on


def test_same_weights_at_another_path_are_accepted(adapter, tiny_model_dir, tmp_path, caplog) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "renamed-copy")
    with caplog.at_level(logging.WARNING, logger="roberta_lora"):
        LoraWrapperRoberta.from_adapter(adapter, model_id=str(copy))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_refuses_with_one_line_and_the_flag_overrides(adapter, tiny_model_dir, other_base, capsys, caplog) -> None:
    argv = ["predict", "--adapter", str(adapter), "--model", str(other_base), "--text", "a great movie"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("roberta-lora predict: error: adapter")]
    assert len(errors) == 1 and "Traceback" not in err
    assert str(other_base) in errors[0] and str(tiny_model_dir) in errors[0] and "--allow-base-mismatch" in errors[0]
    with caplog.at_level(logging.WARNING, logger="roberta_lora"):
        assert main([*argv, "--allow-base-mismatch"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("negative", "positive")
    assert any("loading anyway" in r.getMessage() for r in caplog.records)


def test_init_from_an_adapter_of_another_base(adapter, other_base, caplog) -> None:
    model = LoraWrapperRoberta(model_id=str(other_base), label_names=["negative", "positive"])
    with pytest.raises(AdapterError, match="--allow-base-mismatch"):
        warm_start_from_adapter(model, adapter)
    with caplog.at_level(logging.WARNING, logger="roberta_lora"):
        copied = warm_start_from_adapter(model, adapter, allow_base_mismatch=True)
    assert "classifier.out_proj.bias" in copied and "loading anyway" in caplog.text


def test_a_base_that_is_not_a_model_is_a_config_error(adapter, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty has no config.json .*save_pretrained"):
        LoraWrapperRoberta.from_adapter(adapter, model_id=str(tmp_path / "empty"))


@pytest.mark.parametrize("model_id", ["x" * 300, "/tmp/" + "y" * 300 + "/base"], ids=["long-name", "long-part"])
def test_an_impossible_base_path_is_a_config_error(model_id) -> None:
    with pytest.raises(ConfigError, match="is not a local directory"):
        LoraWrapperRoberta(model_id=model_id)
