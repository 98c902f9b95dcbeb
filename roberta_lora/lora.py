"""The LoRA layer: a frozen linear layer plus a trainable low-rank update.

    y = base(x) + (alpha / r) * B(A(dropout(x)))

`A` (r x in) starts Kaiming-uniform like PEFT's default, `B` (out x r) starts at zero, so
the layer's output equals the base layer's output until `B` has been trained. The base
layer is only ever *called*, never re-implemented, so a quantized base (bitsandbytes
`Linear4bit` / `Linear8bitLt`) works the same as `nn.Linear`.

Dropout is inverted dropout as in `nn.Dropout`, on the input of the LoRA branch only; how it is
made cheap (a 16-bit keep-mask on CPU, the rescaling folded into the last matmul's scaling) is in
`roberta_lora.lora_dropout`. Training on CPU with a plain frozen `nn.Linear` base goes through
`roberta_lora.cpu_lora_kernel`, which computes the same output as one autograd node (and, for
that base type only, evaluates x W^T + b itself instead of calling the layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from roberta_lora.cpu_lora_kernel import LinearWithLora, fused_lora_linears
from roberta_lora.errors import ConfigError
from roberta_lora.lora_dropout import cpu_keep_probability, cpu_keep_threshold, dropped_down_projection


class _Precomputed(NamedTuple):
    """Work done for a layer by its attention module (see injection.LoraRobertaSelfAttention),
    used by the layer's next forward on that very input: either the whole output (tokens, out),
    or hidden = A(dropout(x)) (..., r) with its extra scale."""

    input: torch.Tensor
    output: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    extra_scale: float = 1.0


class LoraLinear(nn.Module):
    """Wraps an existing linear layer with a LoRA update.

    Args:
        base_layer: the layer to adapt (kept as is and frozen by the model wrapper).
        rank: r, the inner dimension of the update (> 0).
        alpha: scaling numerator; the update is multiplied by alpha / rank.
        dropout: dropout probability applied to the input of the LoRA branch only.
        generator: optional RNG for the initial draw of A, so building is reproducible.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank <= 0:
            raise ConfigError(f"lora rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"lora dropout must be in [0, 1), got {dropout!r}")
        in_features = getattr(base_layer, "in_features", None)
        out_features = getattr(base_layer, "out_features", None)
        if in_features is None or out_features is None:
            raise ConfigError(
                f"LoraLinear wraps linear layers with in_features/out_features; got {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        weight = base_layer.weight
        # Quantized weights are stored as integers; the LoRA factors stay in full precision.
        factory = {"device": weight.device, "dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32}
        self.lora_A = nn.Linear(in_features, rank, bias=False, **factory)  # weight: (r, in)
        self.lora_B = nn.Linear(rank, out_features, bias=False, **factory)  # weight: (out, r)
        self.dropout = float(dropout)
        self.merged = False
        # The base weight as it was before `merge()`, so `unmerge()` restores it bit for bit.
        self._weight_before_merge: torch.Tensor | None = None
        self._precomputed: _Precomputed | None = None
        self.reset_lora_parameters(generator)

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) (PEFT's default), B = 0: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense matrix, (alpha / r) * B @ A, shape (out, in). The only place it is built."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def down_projection(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """hidden = A(dropout(x)), shape (..., r), and the extra factor (1 / keep probability while
        dropout is active, else 1) by which the update must be scaled for it.

        `weight` replaces A's weight: the attention module passes its layers' A's stacked, so
        one matmul and one mask serve all of them.
        """
        weight = self.lora_A.weight if weight is None else weight
        x = x.to(weight.dtype)
        if not (self.training and self.dropout > 0):
            return torch.nn.functional.linear(x, weight), 1.0
        return dropped_down_projection(x, weight, self.dropout)

    def use_precomputed(self, x: torch.Tensor, hidden: torch.Tensor, extra_scale: float) -> None:
        """Have the next forward on exactly `x` use `hidden` = A(dropout(x)) (shape (..., r))
        instead of computing it; a forward on any other tensor ignores it."""
        self._precomputed = _Precomputed(x, hidden=hidden, extra_scale=extra_scale)

    def use_precomputed_output(self, x: torch.Tensor, output: torch.Tensor) -> None:
        """Have the next forward on exactly `x` return `output` (tokens, out), computed for it by
        `fused_lora_forward`; a forward on any other tensor ignores it."""
        self._precomputed = _Precomputed(x, output=output)

    def active_dropout(self) -> float:
        """The dropout probability the next forward applies: `dropout` in training, else 0."""
        return self.dropout if self.training else 0.0

    def cpu_kernel_applies(self, x: torch.Tensor) -> bool:
        """Whether a forward on x can go through `cpu_lora_kernel`: training-time autograd on CPU,
        unmerged, a plain frozen nn.Linear base, everything in x's floating dtype."""
        base = self.base_layer
        return (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and not self.merged
            and type(base) is nn.Linear
            and not base.weight.requires_grad
            and x.dtype.is_floating_point
            and base.weight.dtype == x.dtype == self.lora_A.weight.dtype
            and not torch.is_autocast_enabled("cpu")  # autocast would recast the kernel's matmuls
            and not torch.compiler.is_compiling()  # a compiler fuses the plain path itself
        )

    def forget_precomputed(self) -> None:
        """Drop a precomputed hidden that no forward used (so it does not keep tensors alive)."""
        self._precomputed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        precomputed, self._precomputed = self._precomputed, None
        if precomputed is not None and precomputed.input is not x:
            precomputed = None
        if precomputed is not None and precomputed.output is not None:
            return precomputed.output.view(*x.shape[:-1], self.out_features)
        if precomputed is None and self.cpu_kernel_applies(x):
            return fused_lora_forward(x, [self])[0]
        # The base layer sees x as (tokens, in), so an nn.Linear returns a plain (tokens, out)
        # tensor rather than a view, and the update can be accumulated into it in place (see
        # add_update). Linear layers act row by row, so flattening the leading dims changes nothing.
        result = self.base_layer(x.reshape(-1, self.in_features))  # (tokens, out)
        if not self.merged:
            if precomputed is not None and precomputed.hidden is not None:
                hidden, extra_scale = precomputed.hidden, precomputed.extra_scale
            else:
                hidden, extra_scale = self.down_projection(x)  # (..., r)
            result = self.add_update(result, hidden.reshape(-1, self.rank), extra_scale)
        return result.view(*x.shape[:-1], self.out_features)

    def add_update(self, result: torch.Tensor, hidden: torch.Tensor, extra_scale: float = 1.0) -> torch.Tensor:
        """result + scaling * extra_scale * B(hidden), for the base output `result` (tokens, out) and
        hidden = A(dropout(x)) (tokens, r). B @ A is never materialised."""
        scaling = self.scaling * extra_scale
        weight_b = self.lora_B.weight  # (out, r)
        if hidden.dtype != result.dtype:  # e.g. a quantized base computing in bf16 under fp32 factors
            return result + (self.lora_B(hidden) * scaling).to(result.dtype)
        if type(self.base_layer) is nn.Linear and weight_b.dtype == result.dtype and not result._is_view():
            # One GEMM accumulating into the base output (beta=1): no new (tokens, out) tensor and
            # no copy of it. Safe because nn.Linear's backward keeps its input, not its output.
            return result.addmm_(hidden, weight_b.t(), alpha=scaling)
        # Other bases (quantized, or under autocast where the factors' dtype differs): out of place.
        return torch.addmm(result, hidden, weight_b.t(), alpha=scaling)

    def _require_float_base(self, action: str) -> torch.Tensor:
        weight = self.base_layer.weight
        if not weight.dtype.is_floating_point or type(weight) is not nn.Parameter:
            raise ConfigError(
                f"cannot {action} LoRA into a quantized base layer ({type(self.base_layer).__name__}, "
                f"weight dtype {weight.dtype}); load the base in full precision to merge"
            )
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent): forward then costs what the base costs."""
        if self.merged:
            return
        weight = self._require_float_base("merge")
        self._weight_before_merge = weight.detach().clone()
        weight.add_(self.delta_weight().to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact base weight saved by `merge()` (idempotent)."""
        if not self.merged:
            return
        weight = self._require_float_base("unmerge")
        assert self._weight_before_merge is not None  # set together with `merged`
        weight.copy_(self._weight_before_merge)
        self._weight_before_merge = None
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}, "
                f"dropout={self.dropout:g}, merged={self.merged}")


def fused_lora_forward(x: torch.Tensor, layers: Sequence[LoraLinear]) -> list[torch.Tensor]:
    """Each layer's forward on the same x (..., in), through `cpu_lora_kernel` as one autograd node
    with one dropout mask. Every layer must pass `cpu_kernel_applies(x)` and have the same active
    dropout. Returns outputs shaped (..., out) in the order of `layers`.
    """
    dropout = layers[0].active_dropout()
    if any(layer.active_dropout() != dropout for layer in layers):
        raise ValueError("layers fused into one kernel must share their dropout probability")
    threshold = cpu_keep_threshold(dropout) if dropout > 0 else None
    extra_scale = 1.0 / cpu_keep_probability(threshold) if threshold is not None else 1.0
    tensors = [
        LinearWithLora(layer.base_layer.weight, layer.base_layer.bias, layer.lora_A.weight, layer.lora_B.weight,
                       layer.scaling * extra_scale)
        for layer in layers
    ]
    outputs = fused_lora_linears(x.reshape(-1, x.shape[-1]), tensors, threshold)
    return [out.view(*x.shape[:-1], layer.out_features) for out, layer in zip(outputs, layers, strict=True)]
