"""QLoRA options: clear errors without CUDA / bitsandbytes, the QLoRA paper's settings, merge guards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.model import LoraWrapperRoberta
from roberta_lora.quantization import (
    bitsandbytes_problem,
    build_optimizer,
    check_qlora_options,
    quantization_config,
)
from roberta_lora.toy_model import toy_config

needs_no_bnb = pytest.mark.skipif(bitsandbytes_problem() is None, reason="bitsandbytes runs here; see benchmarks/qlora_check.py")


@needs_no_bnb
@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_quantized_base_without_cuda_is_a_clear_error_at_start(tiny_model_dir, quantize) -> None:
    with pytest.raises(ConfigError, match=rf"--quantize {quantize} need bitsandbytes on a CUDA GPU, but .*Run without"):
        LoraWrapperRoberta(model_id=str(tiny_model_dir), quantize=quantize)


@needs_no_bnb
@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_without_cuda_are_a_clear_error(name) -> None:
    with pytest.raises(ConfigError, match=rf"--optim {name} need bitsandbytes on a CUDA GPU"):
        build_optimizer([nn.Parameter(torch.zeros(2))], name, lr=1e-3)


def test_adamw_and_option_validation() -> None:
    parameter = nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([parameter], "adamw", lr=1e-3, weight_decay=0.01)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.01
    check_qlora_options(None, "adamw")
    check_qlora_options("none", "adamw")
    with pytest.raises(ConfigError, match=r"quantize='2bit'.*optim='sgd'.*adamw_8bit"):
        check_qlora_options("2bit", "sgd")


def test_4bit_config_follows_the_qlora_paper() -> None:
    config = quantization_config("4bit")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit").load_in_8bit


def test_quantizing_a_config_or_model_object_is_refused(monkeypatch) -> None:
    import roberta_lora.quantization as quantization

    monkeypatch.setattr(quantization, "bitsandbytes_problem", lambda: None)  # pretend a GPU is there
    with pytest.raises(ConfigError, match="pass a hub id or a local checkpoint directory, not a RobertaConfig"):
        LoraWrapperRoberta(model_id=toy_config(400), quantize="4bit")


def test_full_fine_tuning_of_a_quantized_base_is_refused(tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="method='full' trains every base weight"):
        LoraWrapperRoberta(model_id=str(tiny_model_dir), method="full", quantize="4bit")


def test_merging_into_a_quantized_base_is_refused(tiny_model_dir) -> None:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    query = model.roberta.encoder.layer[0].attention.self.query
    # Stand-in for a bitsandbytes weight: integer storage the LoRA update cannot be added to.
    query.base_layer.weight = nn.Parameter(torch.zeros(32, 32, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ConfigError, match="quantized base"):
        model.merge_and_unload()
    with pytest.raises(ConfigError, match="quantized base"):
        model.merge_adapter()
