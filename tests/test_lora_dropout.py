"""LoRA dropout: the cheap keep-mask, its exact use in LoraLinear, and the shared q/v branch."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from transformers import RobertaModel

import roberta_lora.lora.layer as lora_module
from roberta_lora.lora.attention import LoraRobertaSelfAttention
from roberta_lora.lora.injection import lora_layers
from roberta_lora.lora.layer import LoraLinear, dropout_keep_mask, shared_branches
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5])
def test_cpu_keep_mask_keeps_each_element_with_the_stated_probability(p: float) -> None:
    torch.manual_seed(0)
    x = torch.empty(1 << 22)
    keep, keep_probability = dropout_keep_mask(x, p)
    assert keep.dtype == torch.bool and keep.shape == x.shape
    assert keep_probability == (65536 - round(p * 65536)) / 65536
    assert abs(keep_probability - (1 - p)) <= 1 / 65536
    # Four 16-bit draws come out of each 64-bit word: every one of the four positions must be
    # unbiased (a biased high bit would show up in one position only). Tolerance ~7 sigma.
    for position in range(4):
        fraction = keep[position::4].float().mean().item()
        assert abs(fraction - keep_probability) < 7 * (p * (1 - p) / (len(x) / 4)) ** 0.5, (position, fraction)


def test_keep_mask_is_reproducible_from_the_seed_and_fresh_on_each_call() -> None:
    x = torch.empty(3, 50, 7)  # an element count that is not a multiple of 4
    torch.manual_seed(1)
    first, _ = dropout_keep_mask(x, 0.2)
    second, _ = dropout_keep_mask(x, 0.2)
    torch.manual_seed(1)
    again, _ = dropout_keep_mask(x, 0.2)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_keep_mask_always_keeps_something_and_off_cpu_uses_p_exactly() -> None:
    keep, keep_probability = dropout_keep_mask(torch.empty(10), 0.999999)
    assert keep_probability == 1 / 65536
    meta_keep, meta_probability = dropout_keep_mask(torch.empty(2, 3, device="meta"), 0.1)
    assert meta_keep.shape == (2, 3) and meta_keep.dtype == torch.bool and meta_probability == 0.9


def _layer(dropout: float) -> LoraLinear:
    torch.manual_seed(2)
    layer = LoraLinear(nn.Linear(12, 10), rank=3, alpha=6.0, dropout=dropout)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def test_training_forward_and_gradients_equal_inverted_dropout_written_out() -> None:
    layer = _layer(0.25).train()
    x = torch.randn(4, 5, 12, requires_grad=True)
    torch.manual_seed(9)
    out = layer(x)
    out.square().sum().backward()
    got = (out.detach(), x.grad.clone(), layer.lora_A.weight.grad.clone(), layer.lora_B.weight.grad.clone())

    x_ref = x.detach().clone().requires_grad_(True)
    a_ref = layer.lora_A.weight.detach().clone().requires_grad_(True)
    b_ref = layer.lora_B.weight.detach().clone().requires_grad_(True)
    torch.manual_seed(9)
    keep, keep_probability = dropout_keep_mask(x_ref, 0.25)
    dropped = torch.where(keep, x_ref, 0.0) / keep_probability  # nn.Dropout's definition
    expected = layer.base_layer(x_ref) + layer.scaling * dropped @ a_ref.t() @ b_ref.t()
    expected.square().sum().backward()
    for ours, reference in zip(got, (expected.detach(), x_ref.grad, a_ref.grad, b_ref.grad), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got[0], layer.eval()(x).detach())  # the mask did drop something


def _without_dropout(layer: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    return layer.base_layer(x) + layer.scaling * layer.lora_B(layer.lora_A(x))


def test_dropout_is_unbiased_and_off_in_eval() -> None:
    layer = _layer(0.3)
    x = torch.randn(2, 12)
    with torch.no_grad():
        clean = layer.eval()(x)
        assert torch.equal(clean, _without_dropout(layer, x))
        layer.train()
        mean = torch.stack([layer(x) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, clean, atol=0.1, rtol=0.0)


def test_a_shared_branch_is_used_only_inside_its_block_and_only_for_its_input() -> None:
    layer = _layer(0.0).eval()
    x, other = torch.randn(3, 12), torch.randn(3, 12)
    fake_hidden = torch.ones(3, 3)
    with shared_branches({layer: (x, fake_hidden, 2.0)}):
        torch.testing.assert_close(layer(x), layer.base_layer(x) + 2.0 * layer.scaling * layer.lora_B(fake_hidden))
        with pytest.raises(RuntimeError, match="another input"):  # never a silent recomputation
            layer(other)
        assert torch.equal(_layer(0.0).eval()(x), _without_dropout(_layer(0.0), x))  # other layers: their own
    torch.testing.assert_close(layer(x), _without_dropout(layer, x))  # nothing outlives the block


def test_concurrent_calls_of_one_model_each_get_their_own_branches() -> None:
    """The fused q/v branch is handed to the layers per call (a context variable), not left on the
    modules: threads running the same model at once get exactly what they get alone."""
    model = _toy_wrapper(0.0).eval()
    inputs = [torch.randint(3, 100, (2, 5 + i)) for i in range(8)]
    with torch.no_grad():
        alone = [model(input_ids=ids).logits for ids in inputs]
        barrier = threading.Barrier(len(inputs))

        def run(ids: torch.Tensor) -> torch.Tensor:
            barrier.wait()
            return model(input_ids=ids).logits

        with ThreadPoolExecutor(len(inputs)) as pool:
            together = list(pool.map(run, inputs))
    for mine, reference in zip(together, alone, strict=True):
        assert torch.equal(mine, reference)


def _toy_wrapper(dropout: float, targets: str = "query,value") -> LoraWrapperRoberta:
    torch.manual_seed(0)
    model = LoraWrapperRoberta(model_id=RobertaModel(toy_config(400), add_pooling_layer=False), num_classes=2, lora_rank=4, lora_alpha=8,
                               lora_dropout=dropout, targets=targets, seed=0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_()
    return model


def test_query_and_value_share_one_mask_and_one_matmul_per_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _toy_wrapper(0.1).train()
    drawn: list[tuple[int, ...]] = []

    def counting_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
        drawn.append(tuple(x.shape))
        return dropout_keep_mask(x, p)

    monkeypatch.setattr(lora_module, "dropout_keep_mask", counting_mask)
    ids = torch.randint(3, 100, (2, 9))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    attentions = [m for m in model.modules() if isinstance(m, LoraRobertaSelfAttention)]
    assert len(drawn) == len(attentions) == model.roberta.config.num_hidden_layers
    assert not any(isinstance(v, torch.Tensor) for layer in lora_layers(model).values()
                   for v in vars(layer).values())  # no tensor left on the layers after the call
    assert all(layer.lora_A.weight.grad is not None and layer.lora_A.weight.grad.abs().sum() > 0
               for layer in lora_layers(model).values())


@pytest.mark.parametrize("targets", ["query,value", "all-linear"])
def test_shared_branch_equals_each_layer_on_its_own(targets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(LoraRobertaSelfAttention, "shared_lora_layers", lambda self: [])
        model = _toy_wrapper(0.0, targets).train()  # train mode, no dropout: the paths must agree
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        logits.square().sum().backward()
        results.append((logits.detach(), [layer.lora_A.weight.grad for layer in lora_layers(model).values()]))
    (fused_logits, fused_grads), (plain_logits, plain_grads) = results
    torch.testing.assert_close(fused_logits, plain_logits, atol=1e-6, rtol=1e-5)
    for fused_grad, plain_grad in zip(fused_grads, plain_grads, strict=True):
        # Sums in another order: float32 rounding relative to the tensor's scale (seen: 3e-6 of it).
        torch.testing.assert_close(fused_grad, plain_grad, atol=1e-5 * float(plain_grad.abs().max()), rtol=1e-5)


def test_update_in_place_and_out_of_place_agree() -> None:
    """An nn.Linear base gets the update accumulated into its output; any other base type (here a
    subclass, as a quantized layer would be) gets the out-of-place path: same values, same grads."""

    class OtherLinear(nn.Linear):
        pass

    x = torch.randn(2, 5, 12)
    outputs = []
    for base_type in (nn.Linear, OtherLinear):
        torch.manual_seed(2)
        layer = LoraLinear(base_type(12, 10), rank=3, alpha=6.0).train()
        with torch.no_grad():
            layer.lora_B.weight.normal_()
        leaf = x.clone().requires_grad_(True)
        out = layer(leaf)
        out.square().sum().backward()
        outputs.append((out.detach(), leaf.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad,
                        layer.base_layer.bias.grad))
    for in_place, out_of_place in zip(*outputs, strict=True):
        torch.testing.assert_close(in_place, out_of_place, atol=1e-6, rtol=1e-6)


def test_forward_under_bf16_autocast_keeps_the_base_dtype() -> None:
    layer = _layer(0.1).train()
    x = torch.randn(3, 4, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 4, 10)
    out.float().sum().backward()
    assert layer.lora_A.weight.grad is not None and x.grad is not None
