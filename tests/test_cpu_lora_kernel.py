"""The CPU training kernel: same outputs and gradients as the layers written out, same dropout mask,
and used exactly where it applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RobertaModel

import roberta_lora.cpu_lora_kernel as kernel_module
from roberta_lora.injection import lora_layers
from roberta_lora.lora import LoraLinear, fused_lora_forward
from roberta_lora.lora_dropout import draw_cpu_keep_mask, dropout_keep_mask
from roberta_lora.model import LoraWrapperRoberta
from roberta_lora.toy_model import toy_config


def _frozen_lora_layers() -> list[LoraLinear]:
    """Three layers reading 16 features: a trainable bias, a frozen bias, no bias; ranks 2, 3, 1."""
    torch.manual_seed(5)
    layers = []
    for out_features, rank, bias in ((10, 2, "trainable"), (7, 3, "frozen"), (16, 1, None)):
        base = nn.Linear(16, out_features, bias=bias is not None)
        base.weight.requires_grad_(False)
        if bias == "frozen":
            base.bias.requires_grad_(False)
        layer = LoraLinear(base, rank=rank, alpha=2.0 * rank + 1, dropout=0.3).train()
        with torch.no_grad():
            layer.lora_B.weight.normal_()
        layers.append(layer)
    return layers


def _written_out(layers: list[LoraLinear], x: torch.Tensor, keep: torch.Tensor | None, keep_probability: float):
    dropped = x if keep is None else torch.where(keep, x, 0.0) / keep_probability  # nn.Dropout's definition
    return [layer.base_layer(x) + layer.scaling * dropped @ layer.lora_A.weight.t() @ layer.lora_B.weight.t()
            for layer in layers]


def _gradients(layers: list[LoraLinear], x: torch.Tensor) -> list[torch.Tensor | None]:
    grads = [x.grad]
    for layer in layers:
        bias = layer.base_layer.bias
        grads += [layer.lora_A.weight.grad, layer.lora_B.weight.grad, bias.grad if bias is not None else None]
    return grads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_kernel_equals_the_layers_written_out(dropout: float, x_needs_grad: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 4 rows of 16 features: 30 tokens give 7 full blocks and a partial one.
    monkeypatch.setattr(kernel_module, "BLOCK_ELEMENTS", 4 * 16)
    layers = _frozen_lora_layers()
    for layer in layers:
        layer.dropout = dropout
    x = torch.randn(5, 6, 16, requires_grad=x_needs_grad)
    upstream = [torch.randn(5, 6, layer.out_features) for layer in layers]

    torch.manual_seed(11)
    outputs = fused_lora_forward(x, layers)
    assert all(type(out.grad_fn.next_functions[0][0]).__name__ == "_FusedLoraLinearsBackward" for out in outputs)
    torch.autograd.backward(outputs, upstream)
    got = [out.detach() for out in outputs], _gradients(layers, x)

    for layer in layers:
        layer.zero_grad()
    x_ref = x.detach().clone().requires_grad_(x_needs_grad)
    torch.manual_seed(11)
    keep, keep_probability = dropout_keep_mask(x_ref, dropout) if dropout else (None, 1.0)
    if keep is not None:
        assert 0 < int(keep.sum()) < keep.numel()
    expected = _written_out(layers, x_ref, keep, keep_probability)
    torch.autograd.backward(expected, upstream)
    want = [out.detach() for out in expected], _gradients(layers, x_ref)

    for ours, reference in zip(got[0] + got[1], want[0] + want[1], strict=True):
        if reference is None:
            assert ours is None
        else:
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert layers[1].base_layer.bias.grad is None and layers[0].base_layer.weight.grad is None  # frozen stay so
    assert (x.grad is not None) == x_needs_grad


def test_a_mask_drawn_in_pieces_of_multiples_of_4_equals_one_draw() -> None:
    torch.manual_seed(3)
    whole = draw_cpu_keep_mask(-20000, torch.empty(13, 12, dtype=torch.bool))
    torch.manual_seed(3)
    pieces = torch.empty(13, 12, dtype=torch.bool)
    for rows in (slice(0, 1), slice(1, 5), slice(5, 13)):  # 12, 48 and 96 elements
        draw_cpu_keep_mask(-20000, out=pieces[rows])
    assert torch.equal(whole, pieces)


def test_layer_uses_the_kernel_only_where_it_applies() -> None:
    layer = _frozen_lora_layers()[0]
    x = torch.randn(3, 16, requires_grad=True)

    def through_kernel() -> bool:
        node = layer(x).grad_fn
        while type(node).__name__ == "ViewBackward0":
            node = node.next_functions[0][0]
        return type(node).__name__ == "_FusedLoraLinearsBackward"

    assert through_kernel()
    assert layer.eval() is layer and through_kernel()  # eval with autograd on: the kernel, no dropout
    layer.train()
    with torch.no_grad():
        assert layer(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not through_kernel()
    layer.base_layer.weight.requires_grad_(True)  # a base being fine-tuned needs its own gradient
    assert not through_kernel()
    layer.base_layer.weight.requires_grad_(False)
    layer.merge()
    assert not through_kernel()


def _toy_wrapper(dropout: float) -> LoraWrapperRoberta:
    torch.manual_seed(0)
    model = LoraWrapperRoberta(model_id=RobertaModel(toy_config(400), add_pooling_layer=False), num_classes=3,
                               lora_rank=4, lora_alpha=8, lora_dropout=dropout, seed=0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_()
    return model.train()


def test_model_step_is_the_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout, attention dropout and all: the kernel draws the same mask from the same generator
    state as the layer-by-layer path, so one seeded training step gives the same logits and grads."""
    ids = torch.randint(3, 400, (3, 11), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1])
    runs = []
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(LoraLinear, "cpu_kernel_applies", lambda self, x: False)
        model = _toy_wrapper(0.1)
        torch.manual_seed(7)
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        output.loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        runs.append((output.logits.detach(), grads))
    (kernel_logits, kernel_grads), (plain_logits, plain_grads) = runs
    torch.testing.assert_close(kernel_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert kernel_grads.keys() == plain_grads.keys()
    for name, grad in kernel_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5 * float(plain_grads[name].abs().max()) + 1e-7,
                                   rtol=1e-4, msg=name)
