"""The LoRA layer: a frozen linear layer plus a trainable low-rank update.

    y = base(x) + s * B(A(dropout(x))),   s = alpha / r   (plain LoRA; see `lora.variants` for the rest)

What the update computes (scaling, initialisation, DoRA's magnitude, the merged weight) lives in
`lora.variants`, the one home of the maths; this module applies it efficiently. `A` (r x in) starts
Kaiming-uniform like PEFT's default, `B` (out x r) starts at zero, so the layer's output equals the base
layer's output until `B` has been trained. The base layer is only ever *called*, never re-implemented,
so a quantized base (bitsandbytes `Linear4bit` / `Linear8bitLt`) works the same as `nn.Linear` (plain
LoRA only: DoRA reads the base weight).

Dropout is inverted dropout as in `nn.Dropout`, written so that it costs little: the
keep-mask is applied to `x` and the 1 / (1 - p) rescaling is folded into the LoRA scaling
of the last matmul, which is the same value (the branch is linear after the mask) without
a full-size multiply. On CPU the mask comes from 16 random bits per element instead of a
float draw (`nn.Dropout`'s Bernoulli draw is most of a LoRA step's extra cost there), so p
is used as the nearest multiple of 1/65536 (0.1 -> 0.100006) and rescaled by exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.lora.variants import (
    CHANGES_BASE,
    LoraVariant,
    init_factors,
    initial_factors,
    portable_factors,
    scaling,
    variant_named,
)

_MASK_LEVELS = 1 << 16  # resolution of the CPU dropout mask: one 16-bit random draw per element

# Branches computed ahead for LoRA layers that read the same input, by the module that owns them
# (lora.attention.LoraRobertaSelfAttention), valid for the duration of that module's call only:
# {layer: (input, hidden = A(dropout(input)), extra scale)}. A context variable, not module state:
# concurrent calls (threads, asyncio tasks) each see only their own, and nothing outlives the call.
_SHARED_BRANCHES: ContextVar[Mapping[nn.Module, tuple[torch.Tensor, torch.Tensor, float]] | None] = ContextVar(
    "roberta_lora_shared_branches", default=None
)


@contextmanager
def shared_branches(
    branches: Mapping[nn.Module, tuple[torch.Tensor, torch.Tensor, float]],
) -> Iterator[None]:
    """Within the block, each LoraLinear in `branches` uses its precomputed (input, hidden, scale) and
    refuses any other input (an internal error: the owner computed the branch for that input)."""
    token = _SHARED_BRANCHES.set(branches)
    try:
        yield
    finally:
        _SHARED_BRANCHES.reset(token)


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
    dropped_levels = min(round(p * _MASK_LEVELS), _MASK_LEVELS - 1)  # p < 1 always keeps something
    count = x.numel()
    # One 64-bit draw gives four independent 16-bit values: a quarter of the generator calls of
    # a float draw per element. The full int64 range makes every bit of each word uniform.
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((count + 3) // 4,), dtype=torch.int64)
    draws = words.view(torch.int16)[:count].view(x.shape)  # uniform on [-32768, 32767]
    keep = draws >= dropped_levels - _MASK_LEVELS // 2
    return keep, (_MASK_LEVELS - dropped_levels) / _MASK_LEVELS


class LoraLinear(nn.Module):
    """Wraps an existing linear layer with a LoRA update.

    Args:
        base_layer: the layer to adapt (kept as is and frozen by the model wrapper).
        rank: r, the inner dimension of the update (> 0).
        alpha: scaling numerator; the update is multiplied by alpha / rank (alpha / sqrt(rank) with use_rslora).
        dropout: dropout probability applied to the input of the LoRA branch only.
        generator: optional RNG for the initial draw of A, so building is reproducible.
        variant: "lora" or "dora" (`lora.variants.VARIANTS`).
        use_rslora: scale by alpha / sqrt(rank) (rsLoRA).
        init: how the factors start, a name from `choices.LORA_INITS`: "kaiming" (default) and the other
            `lora.variants.ZERO_START_INITS` start with B A = 0; "pissa" or "olora" start A and B from the base
            weight, and the layer subtracts that start (`lora.variants`), so it begins equal to the base.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        variant: str = "lora",
        use_rslora: bool = False,
        init: str = "kaiming",
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
        self.use_rslora = bool(use_rslora)
        self.init = init
        self.variant: LoraVariant = variant_named(variant)
        self.scaling = scaling(self.alpha, rank, self.use_rslora)
        weight = base_layer.weight
        if self.variant.extra_tensors:
            self._require_float_base(f"use the {self.variant.name!r} variant on")
        if init in CHANGES_BASE:
            self._require_float_base(f"start a {init!r} initialisation from")
            if self.variant.name != "lora":
                raise ConfigError(f"init_lora_weights={init!r} with the {self.variant.name!r} variant is not supported; "
                                  "use it with plain LoRA (rsLoRA is fine)")
        # Quantized weights are stored as integers; the LoRA factors stay in full precision.
        factory = {"device": weight.device, "dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32}
        self.lora_A = nn.Linear(in_features, rank, bias=False, **factory)  # weight: (r, in)
        self.lora_B = nn.Linear(rank, out_features, bias=False, **factory)  # weight: (out, r)
        self.dropout = float(dropout)
        self.merged = False
        # The base weight as it was before `merge()`, so `unmerge()` restores it bit for bit.
        self._weight_before_merge: torch.Tensor | None = None
        self.reset_lora_parameters(generator)

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw A for `init`, B = 0 (`lora.variants.init_factors`), or start both from the base weight (PiSSA,
        OLoRA: frozen copies kept as `lora_A_initial` / `lora_B_initial`, subtracted in forward); then (re)build
        the variant's own parameters for that start (DoRA: the magnitude = the base weight's row norms)."""
        self.register_buffer("lora_A_initial", None, persistent=False)
        self.register_buffer("lora_B_initial", None, persistent=False)
        if self.init in CHANGES_BASE and not self.lora_A.weight.is_meta:
            initial_a, initial_b = initial_factors(self.base_layer.weight, self.rank, self.scaling, self.init)
            self.lora_A.weight.copy_(initial_a)
            self.lora_B.weight.copy_(initial_b)
            self.lora_A_initial = self.lora_A.weight.detach().clone()
            self.lora_B_initial = self.lora_B.weight.detach().clone()
        elif self.init not in CHANGES_BASE:
            init_factors(self.lora_A.weight, self.lora_B.weight, self.init, generator)
        for name, parameter in self.variant.create_extra(self.base_layer.weight, self.lora_A.weight,
                                                         self.lora_B.weight, self.scaling).items():
            setattr(self, name, parameter)

    @property
    def extra(self) -> dict[str, torch.Tensor]:
        """The variant's own parameters by name (DoRA: {"lora_magnitude_vector": (out,)}; plain LoRA: {})."""
        return {name: getattr(self, name) for name in self.variant.extra_tensors}

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense matrix (out, in): merged weight = base weight + this (`lora.variants`)."""
        delta = self.variant.delta_weight(self.base_layer.weight, self.lora_A.weight, self.lora_B.weight,
                                          self.scaling, self.extra)
        if self.lora_A_initial is not None:
            delta = delta - (self.lora_B_initial @ self.lora_A_initial) * self.scaling
        return delta

    def portable_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) giving this layer's update on the unmodified base: rank 2r after a PiSSA / OLoRA start."""
        return portable_factors(self.lora_A.weight.detach(), self.lora_B.weight.detach(), self.lora_A_initial,
                                self.lora_B_initial)

    def forget_initial(self) -> None:
        """Drop the PiSSA / OLoRA start: the factors now hold a whole adapter (one loaded from a file)."""
        self.lora_A_initial = None
        self.lora_B_initial = None

    def lora_input(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """x in the factors' dtype, with dropout's keep-mask applied when training, and the factor
        (1 / keep probability, else 1) by which the update must be scaled for it."""
        x = x.to(self.lora_A.weight.dtype)
        if not (self.training and self.dropout > 0):
            return x, 1.0
        keep, keep_probability = dropout_keep_mask(x, self.dropout)
        # The same 0/1 bytes read as uint8: on CPU a float * uint8 multiply is about twice as fast
        # as float * bool, and autograd applies the same mask again in backward.
        return x * keep.view(torch.uint8), 1.0 / keep_probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The base layer sees x as (tokens, in), so an nn.Linear returns a plain (tokens, out)
        # tensor rather than a view, and the update can be accumulated into it in place (see
        # add_update). Linear layers act row by row, so flattening the leading dims changes nothing.
        flat = x.reshape(-1, self.in_features)
        result = self.base_layer(flat)  # (tokens, out)
        if not self.merged:
            if self.lora_A_initial is not None:  # PiSSA / OLoRA: the start, taken out of the base (no dropout)
                start = F.linear(F.linear(flat.to(self.lora_A_initial.dtype), self.lora_A_initial), self.lora_B_initial)
                result = result - (start * self.scaling).to(result.dtype)
            hidden, extra_scale = self._branch_hidden(x)  # (..., r)
            result = self.add_update(result, hidden.reshape(-1, self.rank), extra_scale)
        return result.view(*x.shape[:-1], self.out_features)

    def _branch_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """A(dropout(x)) and its extra scale: computed here, or by the owner of a shared input."""
        shared = _SHARED_BRANCHES.get()
        entry = shared.get(self) if shared is not None else None
        if entry is None:
            lora_input, extra_scale = self.lora_input(x)
            return self.lora_A(lora_input), extra_scale
        if entry[0] is not x:
            raise RuntimeError(
                "internal error: a LoRA layer was called on another input than the one its attention module "
                "computed the shared branch for"
            )
        return entry[1], entry[2]

    def add_update(self, result: torch.Tensor, hidden: torch.Tensor, extra_scale: float = 1.0) -> torch.Tensor:
        """result + scaling * extra_scale * B(hidden), for the base output `result` (tokens, out) and
        hidden = A(dropout(x)) (tokens, r). B @ A is never materialised (plain LoRA). A variant with a
        per-feature factor (DoRA) gives row_scale * (result - bias + update) + bias."""
        scaling = self.scaling * extra_scale
        row_scale = self.variant.row_scale(self.base_layer.weight, self.lora_A.weight, self.lora_B.weight,
                                           self.scaling, self.extra)
        if row_scale is not None:
            bias = self.base_layer.bias
            update = self.lora_B(hidden.to(self.lora_B.weight.dtype)) * scaling
            without_bias = result if bias is None else result - bias
            scaled = (without_bias + update.to(result.dtype)) * row_scale.to(result.dtype)
            return scaled if bias is None else scaled + bias
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
        options = (f", variant={self.variant.name}" if self.variant.name != "lora" else "") + (
            ", rslora" if self.use_rslora else "") + (f", init={self.init}" if self.init != "kaiming" else "")
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}, "
                f"dropout={self.dropout:g}{options}, merged={self.merged}")
