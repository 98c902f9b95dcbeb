"""The LoRA layer alone: init, delta, merge/unmerge, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.lora.layer import LoraLinear


def make_layer(rank: int = 4, alpha: float = 8.0, seed: int = 0) -> LoraLinear:
    torch.manual_seed(seed)
    return LoraLinear(nn.Linear(16, 12), rank=rank, alpha=alpha)


def test_output_equals_base_at_init_and_b_is_zero() -> None:
    layer = make_layer()
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer.lora_B.weight, torch.zeros(12, 4))
    assert torch.equal(layer(x), layer.base_layer(x))


def test_a_is_kaiming_uniform_like_peft() -> None:
    layer = make_layer(rank=64)
    # kaiming_uniform(a=sqrt(5)) on fan_in=16 gives bound = 1/sqrt(fan_in).
    bound = 1 / math.sqrt(16)
    weight = layer.lora_A.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound


def test_forward_adds_scaled_low_rank_update() -> None:
    layer = make_layer(rank=4, alpha=8.0)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 16)
    expected = layer.base_layer(x) + (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T) * 2.0
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B.weight @ layer.lora_A.weight * 2.0)


def test_merge_matches_unmerged_and_is_idempotent_and_unmerge_is_exact() -> None:
    layer = make_layer()
    nn.init.normal_(layer.lora_B.weight)
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 16)
    unmerged_out = layer(x)
    layer.merge()
    merged_once = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.base_layer.weight, merged_once), "merging twice must change nothing"
    torch.testing.assert_close(layer(x), unmerged_out, atol=1e-5, rtol=0)
    layer.unmerge()
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original), "unmerge must restore the base bit for bit"
    assert torch.equal(layer(x), unmerged_out)


def test_same_generator_seed_gives_same_a() -> None:
    first = LoraLinear(nn.Linear(8, 8), 2, 2, generator=torch.Generator().manual_seed(3))
    second = LoraLinear(nn.Linear(8, 8), 2, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.lora_A.weight, second.lora_A.weight)


@pytest.mark.parametrize("rank", [0, -1, 2.5])
def test_bad_rank_is_a_clear_error(rank) -> None:
    with pytest.raises(ConfigError, match="rank"):
        LoraLinear(nn.Linear(4, 4), rank=rank, alpha=1)


def test_non_linear_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="Conv1d"):
        LoraLinear(nn.Conv1d(2, 2, 1), rank=1, alpha=1)
