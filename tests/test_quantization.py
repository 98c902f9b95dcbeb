"""QLoRA on a CPU: clear errors without CUDA / bitsandbytes, and the quantized-base path itself run on a
stand-in quantized layer (int8 weights, dequantized in forward: what bitsandbytes' layers do on a GPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import RobertaModel

import roberta_lora.lora.layer as layer_module
import roberta_lora.model.quantization as quantization
from roberta_lora.errors import ConfigError
from roberta_lora.lora.injection import inject_lora, lora_layers
from roberta_lora.lora.layer import LoraLinear
from roberta_lora.model.quantization import bitsandbytes_problem, check_qlora_options, quantization_config
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.optim import build_optimizer

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
        build_optimizer(nn.Linear(2, 2), name, lr=1e-3)


def test_option_validation_lists_every_problem() -> None:
    check_qlora_options(None, "adamw")
    check_qlora_options("none", "adamw")
    with pytest.raises(ConfigError, match=r"quantize='2bit'.*optim='sgd'.*adamw_8bit"):
        check_qlora_options("2bit", "sgd")


def test_4bit_config_follows_the_qlora_paper() -> None:
    config = quantization_config("4bit")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit").load_in_8bit


# ----------------------------------------------------------------------------- the path itself, on a stand-in
class StandInQuantizedLinear(nn.Linear):
    """int8 weight rows with one float scale each, dequantized in forward, as bitsandbytes' Linear8bitLt
    (an nn.Linear subclass too). The weight is an integer tensor (not trainable, not mergeable), the
    bias stays in float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, device="meta")
        scale = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127  # (out, 1)
        self.weight = nn.Parameter(torch.round(linear.weight.detach() / scale).to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype), self.bias)


def stand_in_quantized_encoder(model_id, quantize, attn_implementation=None) -> RobertaModel:
    encoder = RobertaModel.from_pretrained(str(model_id), add_pooling_layer=False)
    for name, module in list(encoder.named_modules()):
        if isinstance(module, nn.Linear) and ".layer." in name:
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent), child, StandInQuantizedLinear(module))
    return encoder


def device_bound_init(real):
    """kaiming_uniform_ as it behaves for a tensor on an accelerator: a generator of another device
    is refused (torch: "Expected a 'cuda' device type for generator"). Meta stands in for CUDA."""

    def init(tensor, *args, generator=None, **kwargs):
        if generator is not None and tensor.device != generator.device:
            raise RuntimeError(f"Expected a '{tensor.device.type}' device type for generator")
        return real(tensor, *args, generator=generator, **kwargs)

    return init


def test_lora_a_is_drawn_on_the_cpu_whatever_the_base_device(monkeypatch) -> None:
    monkeypatch.setattr(layer_module.nn.init, "kaiming_uniform_", device_bound_init(nn.init.kaiming_uniform_))
    with torch.device("meta"):
        encoder = RobertaModel(toy_config(400), add_pooling_layer=False)
    # A seeded build on a base on another device than the CPU generator (QLoRA on CUDA) must start.
    inject_lora(encoder, ["query", "value"], rank=4, alpha=8, generator=torch.Generator().manual_seed(0))
    # And the draw does not depend on the base's device or dtype: the same generator gives the same A.
    cpu, half = nn.Linear(32, 32), nn.Linear(32, 32).to(torch.bfloat16)
    first = LoraLinear(cpu, 4, 8.0, generator=torch.Generator().manual_seed(7)).lora_A.weight
    second = LoraLinear(half, 4, 8.0, generator=torch.Generator().manual_seed(7)).lora_A.weight
    assert second.dtype == torch.bfloat16 and torch.equal(second, first.to(torch.bfloat16))


def test_a_quantized_base_trains_lora_only_and_its_adapter_loads_on_the_full_precision_base(
        tiny_model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(quantization, "bitsandbytes_problem", lambda: None)  # pretend a GPU is there
    monkeypatch.setattr(quantization, "load_quantized_encoder", stand_in_quantized_encoder)
    monkeypatch.setattr(layer_module.nn.init, "kaiming_uniform_", device_bound_init(nn.init.kaiming_uniform_))
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), quantize="4bit", seed=0, lora_rank=4, lora_alpha=8)
    full = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0, lora_rank=4, lora_alpha=8)
    # The fingerprint ignores quantization (embeddings are never quantized): one base, two precisions.
    assert model.adapter_config.base_fingerprint == full.adapter_config.base_fingerprint
    layers = lora_layers(model.roberta)
    assert layers and all(isinstance(layer.base_layer, StandInQuantizedLinear) for layer in layers.values())
    assert all(layer.lora_A.weight.dtype == torch.float32 for layer in layers.values())  # factors in full precision
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(p.dtype == torch.int8 for p in frozen.values())

    optimizer = build_optimizer(model, lr=1e-2)
    ids = torch.randint(3, 400, (4, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        loss = model(ids, labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert math.isfinite(loss.item())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)  # base untouched
    assert any(layer.lora_B.weight.abs().sum() > 0 for layer in layers.values())  # LoRA trained
    with pytest.raises(ConfigError, match="cannot merge LoRA into a quantized base layer"):
        model.merge_adapter()

    # The adapter is an ordinary adapter: on the base the stand-in was quantized from, with the same
    # dequantized weights, it gives the same logits.
    model.eval().save_adapter(tmp_path / "qlora")
    loaded = LoraWrapperRoberta.from_adapter(tmp_path / "qlora", model_id=str(tiny_model_dir))
    with torch.no_grad():
        for name, module in loaded.roberta.named_modules():  # base linears, inside LoRA layers or not
            twin = model.roberta.get_submodule(name)
            if isinstance(twin, StandInQuantizedLinear):
                module.weight.copy_(twin.dequantized())
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
