"""The LoRA layer: a frozen linear layer plus a trainable low-rank update.

    y = base(x) + (alpha / r) * B(A(dropout(x)))

`A` (r x in) starts Kaiming-uniform like PEFT's default, `B` (out x r) starts at zero, so
the layer's output equals the base layer's output until `B` has been trained. The base
layer is only ever *called*, never re-implemented, so a quantized base (bitsandbytes
`Linear4bit` / `Linear8bitLt`) works the same as `nn.Linear`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from roberta_lora.errors import ConfigError


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
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # The base weight as it was before `merge()`, so `unmerge()` restores it bit for bit.
        self._weight_before_merge: torch.Tensor | None = None
        self.reset_lora_parameters(generator)

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) (PEFT's default), B = 0: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense matrix, (alpha / r) * B @ A, shape (out, in). The only place it is built."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., out)
        if self.merged:
            return result
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out); B @ A is never materialised here.
        hidden = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (..., r)
        if hidden.dtype != result.dtype:  # e.g. a quantized base computing in bf16 under fp32 factors
            return result + (self.lora_B(hidden) * self.scaling).to(result.dtype)
        # result + scaling * hidden @ B^T as one GEMM that accumulates onto `result` (beta=1, alpha=scaling):
        # no separate (..., out) update tensor and no full-size multiply by the scaling, forward or
        # backward. Same value as `lora_B(hidden) * scaling` added, up to float rounding.
        out = torch.addmm(result.reshape(-1, self.out_features), hidden.reshape(-1, self.rank),
                          self.lora_B.weight.t(), alpha=self.scaling)
        return out.view(result.shape)

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
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"
