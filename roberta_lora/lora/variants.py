"""The one home of the LoRA maths: how an update is scaled, initialised, added, merged and served per row.

Every path that computes what an adapter does goes through here: `LoraLinear` (training, eval, merge
and unmerge), the mixed-batch engine (`adapters.batched`: one table row per adapter), weighted
combinations (`adapters.combine`), merged checkpoints and PEFT export / import. A variant is a
`LoraVariant` subclass registered in `VARIANTS` under the name its adapter config selects (PEFT's
`LoraVariant` idea: the layer keeps the frozen base and the factors, the variant says what they
compute):

- `lora` (plain): y = W x + b + s * B A x, with s = alpha / r (or alpha / sqrt(r) under rsLoRA).
- `dora` (Liu et al. 2024, PEFT's `use_dora`): a trainable magnitude m (one per output feature) times
  the direction of the updated weight, y = (m / ||W + s B A||) * (W x + s B A dropout(x)) + b, the
  row norm treated as a constant in backward (the paper's section 4.3, as PEFT does). m starts at
  ||W||, so the layer starts as the base. Under dropout PEFT rescales the *dropped* input's base
  output; here the magnitude rescales W x itself (the paper's W' x); in eval (no dropout) both are
  the same, and that is what the interop tests compare.

A path that cannot compute a variant says so (`require`), naming the variant and what to do: never
is an adapter of one variant computed as another.

Scaling (`scaling`) and initialisation (`init_factors`) are options of every variant:
`use_rslora` divides by sqrt(r) instead of r; `init_lora_weights` is "kaiming" (A Kaiming-uniform,
B = 0, PEFT's default) or "gaussian" (A ~ N(0, 1/r), B = 0, PEFT's "gaussian").
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from roberta_lora.choices import LORA_INITS as INIT_CHOICES
from roberta_lora.errors import ConfigError


def scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """What multiplies B A: alpha / r, or alpha / sqrt(r) under rsLoRA (Kalajdzievski 2023)."""
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


@torch.no_grad()
def init_factors(weight_a: torch.Tensor, weight_b: torch.Tensor, init: str,
                 generator: torch.Generator | None = None) -> None:
    """Fill A (r, in) and B (out, r) in place for `init`; the update B A starts at zero either way.

    A is drawn on the CPU in float32 and then moved to the factors' device and dtype, so a CPU generator
    works, and gives the same A whatever the base's device (CUDA for QLoRA, meta for skeletons).
    """
    if init not in INIT_CHOICES:
        raise ConfigError(f"init_lora_weights={init!r}; expected one of {list(INIT_CHOICES)}")
    if weight_a.is_meta and generator is None:  # shapes only (adapter skeletons): leave the global RNG alone
        return
    draw = torch.empty(weight_a.shape, dtype=torch.float32)  # on the CPU, where `generator` draws
    if init == "kaiming":
        nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=generator)
    else:
        nn.init.normal_(draw, mean=0.0, std=1.0 / weight_a.size(0), generator=generator)
    if weight_a.is_meta:  # the generator advanced as for a real base; nothing to fill
        return
    weight_a.copy_(draw.to(device=weight_a.device, dtype=weight_a.dtype))
    weight_b.zero_()


class LoraVariant:
    """Plain LoRA. Subclasses override what differs; every method takes the layer's tensors explicitly, so
    the same maths serves a live `LoraLinear` and an adapter read from a file (the batched engine).

    extra_tensors: names of the parameters the variant adds to a layer (saved with the adapter, beside
        lora_A and lora_B), with `create_extra` building them.
    combinable: whether the weighted combinations (adapters.combine, a sum of low-rank deltas) apply.
    batchable: whether the mixed-batch engine can serve it (from A, s B and `row_scale`, one row each).
    peft: what PEFT's LoraConfig says for this variant (export writes it, import reads it).
    """

    name: ClassVar[str] = "lora"
    extra_tensors: ClassVar[tuple[str, ...]] = ()
    combinable: ClassVar[bool] = True
    batchable: ClassVar[bool] = True  # the mixed-batch engine computes it from (A, s B, row_scale)
    has_row_scale: ClassVar[bool] = False  # `row_scale` returns a tensor
    peft: ClassVar[dict[str, object]] = {}

    def create_extra(self, base_weight: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor,
                     scale: float) -> dict[str, nn.Parameter]:
        """The variant's own parameters for a layer with base weight (out, in) and fresh factors."""
        return {}

    def delta_weight(self, base_weight: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor,
                     scale: float, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the adapter adds to the base weight, (out, in): merged weight = base + this."""
        return (weight_b @ weight_a) * scale

    def row_scale(self, base_weight: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor,
                  scale: float, extra: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A per-output-feature factor (out,) applied to W x + s B A x before the bias, or None (plain LoRA).
        The forward pass and the batched engine both use it: y = row_scale * (W x + s B A x) + b."""
        return None


class DoraVariant(LoraVariant):
    """DoRA: weight-decomposed LoRA (see the module docstring)."""

    name = "dora"
    extra_tensors = ("lora_magnitude_vector",)  # PEFT's name, so export is a rename
    combinable = False  # m / ||W + sum of deltas|| is not a sum of the adapters' deltas
    has_row_scale = True
    peft = {"use_dora": True}

    def create_extra(self, base_weight, weight_a, weight_b, scale):
        norm = _row_norm(base_weight, weight_a, weight_b, scale)  # ||W|| while B A = 0
        return {"lora_magnitude_vector": nn.Parameter(norm.to(weight_a.dtype))}

    def row_scale(self, base_weight, weight_a, weight_b, scale, extra):
        norm = _row_norm(base_weight, weight_a, weight_b, scale).detach()  # a constant in backward (paper, 4.3)
        magnitude = extra["lora_magnitude_vector"]
        return magnitude / norm.to(magnitude.dtype)

    def delta_weight(self, base_weight, weight_a, weight_b, scale, extra):
        updated = base_weight.to(weight_a.dtype) + (weight_b @ weight_a) * scale
        factor = self.row_scale(base_weight, weight_a, weight_b, scale, extra)
        return factor[:, None] * updated - base_weight.to(weight_a.dtype)


def _row_norm(base_weight: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor, scale: float) -> torch.Tensor:
    """||W + s B A|| per output feature (over the input dimension), (out,), in the factors' dtype."""
    return torch.linalg.vector_norm(base_weight.to(weight_a.dtype) + (weight_b @ weight_a) * scale, dim=1)


PLAIN = LoraVariant()
VARIANTS: dict[str, LoraVariant] = {variant.name: variant for variant in (PLAIN, DoraVariant())}
VARIANT_NAMES = tuple(VARIANTS)
EXTRA_TENSOR_NAMES = tuple(dict.fromkeys(n for v in VARIANTS.values() for n in v.extra_tensors))


def variant_named(name: str) -> LoraVariant:
    """The variant registered as `name`; ConfigError listing the known ones."""
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown LoRA variant {name!r}; expected one of {list(VARIANTS)}") from None


def require(name: str, allowed: bool, where: str, instead: str) -> None:
    """Refuse an adapter of variant `name` on a path that cannot compute it: never compute it as plain LoRA."""
    if not allowed:
        raise ConfigError(f"{where} cannot compute {name!r} adapters (it would compute them as another variant); "
                          f"{instead}")
