"""LoRA dropout: a cheap keep-mask, and the first LoRA matmul A(dropout(x)) written out plainly.

The result is inverted dropout as `nn.Dropout` defines it, followed by the down-projection:

    hidden = (x * keep / keep_probability) @ A^T

Two things make it cheap:

- On CPU the keep-mask comes from 16 random bits per element instead of a float draw
  (`nn.Dropout`'s Bernoulli draw is most of what a LoRA step adds on CPU), so p is used as the
  nearest multiple of 1/65536 (0.1 -> 0.100006) and rescaled by exactly that.
- The 1 / keep_probability rescaling is not applied here: it is returned as an extra scale that
  the caller folds into the LoRA scaling of the last matmul, which is the same value because the
  branch is linear after the mask.

Training on CPU with plain frozen bases goes through `cpu_lora_kernel`, which draws the same mask
block by block; this plain formula serves accelerators, autocast, torch.compile and other bases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_LEVELS = 1 << 16  # resolution of the CPU dropout mask: one 16-bit random draw per element


def cpu_keep_threshold(p: float) -> int:
    """The CPU mask's threshold for drop probability p: an element is kept when its draw (uniform
    on [-32768, 32767]) is >= this. round(p * 65536) of the 65536 levels drop, at most 65535."""
    dropped_levels = min(round(p * MASK_LEVELS), MASK_LEVELS - 1)  # p < 1 always keeps something
    return dropped_levels - MASK_LEVELS // 2


def cpu_keep_probability(threshold: int) -> float:
    """The probability that the CPU mask with this threshold keeps an element."""
    return (MASK_LEVELS // 2 - threshold) / MASK_LEVELS


def draw_cpu_keep_mask(threshold: int, out: torch.Tensor) -> torch.Tensor:
    """Fill the bool tensor `out` with a fresh CPU keep-mask and return it.

    One 64-bit draw gives four independent 16-bit values: a quarter of the generator calls of a
    float draw per element. The full int64 range makes every bit of each word uniform. Filling a
    tensor in pieces whose sizes are multiples of 4 consumes the generator exactly as filling it
    at once, so the mask does not depend on how it was split.
    """
    count = out.numel()
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((count + 3) // 4,), dtype=torch.int64)
    draws = words.view(torch.int16)[:count].view(out.shape)  # uniform on [-32768, 32767]
    return torch.ge(draws, threshold, out=out)


def dropout_keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A dropout keep-mask for `x`: (bool tensor shaped like x, probability that an element is kept).

    Each element is kept independently with the returned probability, which is 1 - p exactly on
    accelerators and 1 - round(p * 65536) / 65536 on CPU (see the module docstring). Callers
    scale kept values by 1 / that probability. Draws from torch's generator for x's device, so
    `torch.manual_seed` makes it reproducible and a resumed run's saved RNG state continues it.
    """
    if x.device.type != "cpu":
        # One fused uniform draw per element is cheap on a GPU; keep where u >= p, so P(keep) = 1 - p.
        return torch.rand(x.shape, device=x.device) >= p, 1.0 - p
    threshold = cpu_keep_threshold(p)
    keep = draw_cpu_keep_mask(threshold, torch.empty(x.shape, dtype=torch.bool))
    return keep, cpu_keep_probability(threshold)


def dropped_down_projection(x: torch.Tensor, weight: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """(x * keep) @ weight^T for a fresh dropout keep-mask with drop probability p, and the factor
    (1 / keep probability) by which the caller must scale the result to get inverted dropout.

    x: (..., in) in weight's dtype; weight: (r, in). Returns hidden (..., r).
    """
    keep, keep_probability = dropout_keep_mask(x, p)
    # The same 0/1 bytes read as uint8: a float * uint8 multiply is about twice as fast as
    # float * bool on CPU, and autograd applies the same mask again in backward.
    return F.linear(x * keep.view(torch.uint8), weight), 1.0 / keep_probability
