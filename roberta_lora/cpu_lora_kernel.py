"""A CPU training kernel for LoRA linears that read the same input (query and value, say).

For each layer i, with a plain frozen `nn.Linear` base (weight W_i, bias b_i) and LoRA factors
A_i (r_i x in), B_i (out_i x r_i) and scale s_i:

    out_i = x W_i^T + b_i + s_i * B_i A_i (dropout(x))       one dropout mask shared by all i

which is what the layers compute one by one (`LoraLinear.forward`), as one autograd node. On a
CPU, what LoRA adds to a frozen-base step is mostly passes over activation-sized tensors, not
arithmetic; one node for the layers can skip most of them:

- backward accumulates every layer's input gradient (x W_i and the LoRA branch) into one
  buffer, where autograd would compute each separately and then add them up;
- the mask, the low-rank matmuls and their gradients run a block of rows at a time, so each
  block of x, of the mask and of the incoming gradients is read from memory once and then
  reused from the core's cache; the masked input is rebuilt per block in backward instead of
  keeping an activation-sized copy alive;
- the dropout mask is drawn block by block straight into its bool tensor, with the same
  generator calls as `dropout_keep_mask` on the whole input (so the same seed gives the same
  mask on either path).

The base weights are only read (they are frozen: the kernel never computes their gradient and
is not used when they require one). Used by `LoraLinear` and `LoraRobertaSelfAttention` while
training on CPU in full precision; accelerators, autocast, torch.compile, quantized or other
base types take the layer-by-layer path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from roberta_lora.lora_dropout import draw_cpu_keep_mask

# Elements of x per block of rows: 48K floats (192 KB) keep a block of x, its masked copy and
# the matching gradient blocks inside a core's L2 cache. Measured on this machine: blocks of
# 32-64 rows at hidden size 768 were fastest; 16 rows at 3072.
BLOCK_ELEMENTS = 48 * 1024


class LinearWithLora(NamedTuple):
    """One layer's tensors for `fused_lora_linears`."""

    weight: torch.Tensor  # (out, in), frozen
    bias: torch.Tensor | None  # (out,)
    lora_A: torch.Tensor  # (r, in)
    lora_B: torch.Tensor  # (out, r)
    scaling: float  # alpha / r, times 1 / keep probability while dropout is active


def fused_lora_linears(
    x: torch.Tensor, layers: Sequence[LinearWithLora], keep_threshold: int | None
) -> list[torch.Tensor]:
    """Every layer's output for the input rows x (tokens, in), as one autograd node.

    keep_threshold: the dropout mask's threshold from `lora_dropout.cpu_keep_threshold` (an element
    is kept when its 16-bit draw is at or above it), or None for no dropout.
    """
    flat: list[torch.Tensor | None] = []
    for layer in layers:
        flat.extend((layer.weight, layer.bias, layer.lora_A, layer.lora_B))
    scalings = tuple(layer.scaling for layer in layers)
    return list(_FusedLoraLinears.apply(x, keep_threshold, scalings, *flat))


def _rows_per_block(x: torch.Tensor) -> int:
    # A multiple of 4 rows: every block but the last then draws a whole number of 64-bit words
    # for its mask, so the generator is consumed exactly as by one draw for all of x.
    return max(4, BLOCK_ELEMENTS // x.shape[1] // 4 * 4)


class _FusedLoraLinears(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep_threshold, scalings, *flat):  # type: ignore[override]
        weights, biases, factors_a, factors_b = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        x = x.contiguous()
        stacked_a_t = torch.cat(factors_a).t()  # (in, sum of ranks): one matmul for every layer's A
        keep = None
        if keep_threshold is None:
            hidden = x @ stacked_a_t  # (tokens, sum of ranks)
        else:
            keep = torch.empty(x.shape, dtype=torch.bool)
            hidden = x.new_empty(x.shape[0], stacked_a_t.shape[1])
            step = _rows_per_block(x)
            masked = x.new_empty(min(step, x.shape[0]), x.shape[1])  # reused: allocating per block costs a pass
            for x_block, keep_block, hidden_block in zip(x.split(step), keep.split(step), hidden.split(step), strict=True):
                draw_cpu_keep_mask(keep_threshold, out=keep_block)
                masked_block = masked[: len(x_block)]
                # The mask's bytes read as uint8: a float * uint8 multiply is ~2x float * bool on CPU.
                torch.mul(x_block, keep_block.view(torch.uint8), out=masked_block)
                torch.mm(masked_block, stacked_a_t, out=hidden_block)
        outputs = []
        for weight, bias, factor_b, scaling, hidden_part in zip(
            weights, biases, factors_b, scalings, hidden.split([b.shape[1] for b in factors_b], dim=1), strict=True
        ):
            out = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
            outputs.append(out.addmm_(hidden_part, factor_b.t(), alpha=scaling))  # (tokens, out)
        ctx.scalings = scalings
        ctx.save_for_backward(x, keep, hidden, stacked_a_t, *weights, *factors_b)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):  # type: ignore[override]
        x, keep, hidden, stacked_a_t, *rest = ctx.saved_tensors
        count = len(ctx.scalings)
        weights, factors_b = rest[:count], rest[count:]
        needs = ctx.needs_input_grad
        needs_x, needs_any_a = needs[0], any(needs[3 + 4 * i + 2] for i in range(count))
        ranks = [factor_b.shape[1] for factor_b in factors_b]

        grad_x = None
        if needs_x:  # every layer's x W_i accumulated into one buffer (beta=1 GEMMs)
            grad_x = torch.mm(grad_outputs[0], weights[0])
            for grad, weight in zip(grad_outputs[1:], weights[1:], strict=True):
                grad_x.addmm_(grad, weight)
        scaled_b = [factor_b * scaling for factor_b, scaling in zip(factors_b, ctx.scalings, strict=True)]
        grad_b_t = [x.new_zeros(factor_b.shape[1], factor_b.shape[0]) if needs[3 + 4 * i + 3] else None  # (r, out)
                    for i, factor_b in enumerate(factors_b)]
        grad_stacked_a_t = torch.zeros_like(stacked_a_t) if needs_any_a else None
        hidden_parts = hidden.split(ranks, dim=1)
        _low_rank_backward(x, keep, stacked_a_t, hidden_parts, grad_outputs, scaled_b, ctx.scalings,
                           grad_x, grad_stacked_a_t, grad_b_t)

        grads: list[torch.Tensor | None] = [grad_x, None, None]
        start = 0
        for i, grad in enumerate(grad_outputs):
            needs_bias, needs_a = needs[3 + 4 * i + 1], needs[3 + 4 * i + 2]
            grads += [
                None,  # the frozen base weight
                grad.sum(0) if needs_bias else None,
                grad_stacked_a_t[:, start:start + ranks[i]].t() if needs_a else None,
                grad_b_t[i].t() if grad_b_t[i] is not None else None,
            ]
            start += ranks[i]
        return tuple(grads)


def _low_rank_backward(
    x: torch.Tensor,
    keep: torch.Tensor | None,
    stacked_a_t: torch.Tensor,
    hidden_parts: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    scaled_b: Sequence[torch.Tensor],
    scalings: Sequence[float],
    grad_x: torch.Tensor | None,
    grad_stacked_a_t: torch.Tensor | None,
    grad_b_t: Sequence[torch.Tensor | None],
) -> None:
    """Gradients of the LoRA branches, a block of rows at a time so that each block of x, of the
    mask and of every layer's output gradient is read from memory once: accumulates into
    grad_stacked_a_t (in, sum of ranks) and each grad_b_t (r, out), and adds the branches' share
    of the input gradient into grad_x, all in place (any of them may be None: not needed)."""
    step = _rows_per_block(x)
    size = min(step, x.shape[0])
    masked = x.new_empty(size, x.shape[1]) if keep is not None else None
    scratch = x.new_empty(size, x.shape[1]) if keep is not None and grad_x is not None else None
    x_blocks = x.split(step)
    none_blocks = [None] * len(x_blocks)
    blocks = zip(
        x_blocks,
        keep.view(torch.uint8).split(step) if keep is not None else none_blocks,
        grad_x.split(step) if grad_x is not None else none_blocks,
        zip(*(grad.split(step) for grad in grad_outputs), strict=True),  # per block: every layer's rows
        zip(*(hidden.split(step) for hidden in hidden_parts), strict=True),
        strict=True,
    )
    for x_block, keep_block, grad_x_block, grad_blocks, hidden_blocks in blocks:
        # d loss / d hidden for this block, every layer side by side: (rows, sum of ranks)
        grad_hidden = torch.cat([torch.mm(g, b) for g, b in zip(grad_blocks, scaled_b, strict=True)], dim=1)
        for grad_b, hidden_block, grad_block, scaling in zip(grad_b_t, hidden_blocks, grad_blocks, scalings,
                                                             strict=True):
            if grad_b is not None:
                grad_b.addmm_(hidden_block.t(), grad_block, alpha=scaling)
        if keep_block is None:
            input_block = x_block
        else:
            input_block = torch.mul(x_block, keep_block, out=masked[: len(x_block)])
        if grad_stacked_a_t is not None:
            grad_stacked_a_t.addmm_(input_block.t(), grad_hidden)
        if grad_x_block is not None:
            if keep_block is None:
                grad_x_block.addmm_(grad_hidden, stacked_a_t.t())
            else:  # the mask applies to the branches' share of the gradient only
                branch = torch.mm(grad_hidden, stacked_a_t.t(), out=scratch[: len(x_block)])
                grad_x_block.add_(branch.mul_(keep_block))
