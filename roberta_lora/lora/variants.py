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

Scaling (`scaling`) and initialisation (`init_factors`, `initial_factors`) are options of every variant:
`use_rslora` divides by sqrt(r) instead of r; `init_lora_weights` is "kaiming" (A Kaiming-uniform,
B = 0, PEFT's default), "gaussian" (A ~ N(0, 1/r), B = 0), "orthogonal" (A and B both non-zero, from
the rows of one random orthogonal matrix, so that B A = 0; even r), or "pissa" / "olora", which start A and B
from the base weight (its top-r singular directions; its QR factors) and take that part out of the
base: PEFT rewrites the base weight to W - s B0 A0; here the base stays as it is and the layer keeps
B0, A0 frozen and subtracts s B0 A0 x (the same function, and the plain base is never lost). What such
an adapter adds to the *unmodified* base is s (B A - B0 A0) = s [B, -B0] [A; A0]: a plain LoRA of rank
2r, which is what its file holds (`portable_factors`; PEFT's `path_initial_model_for_weight_conversion`
conversion, the same doubling of r and alpha).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from roberta_lora.choices import LORA_INITS as INIT_CHOICES
from roberta_lora.choices import LORA_INITS_FROM_BASE
from roberta_lora.errors import ConfigError


def scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """What multiplies B A: alpha / r, or alpha / sqrt(r) under rsLoRA (Kalajdzievski 2023)."""
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


CHANGES_BASE = LORA_INITS_FROM_BASE  # inits whose start is a part of the base weight, subtracted again


@torch.no_grad()
def initial_factors(base_weight: torch.Tensor, rank: int, scale: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0 (r, in), B0 (out, r)) in float32 for "pissa" (s B0 A0 = the top-r singular part of W, PEFT's
    `pissa_init`) or "olora" (B0, A0 = the first r columns / rows of W's QR factors, PEFT's `olora_init`)."""
    weight = base_weight.detach().to(torch.float32)
    if init == "pissa":
        left, singular, right = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(singular[:rank] / scale)
        return root[:, None] * right[:rank], left[:, :rank] * root[None, :]
    if init == "olora":
        q, r = torch.linalg.qr(weight)
        return r[:rank].contiguous(), q[:, :rank].contiguous()
    raise ConfigError(f"init_lora_weights={init!r} does not start from the base weight; expected one of "
                      f"{list(CHANGES_BASE)}")


def portable_factors(weight_a: torch.Tensor, weight_b: torch.Tensor, initial_a: torch.Tensor | None,
                     initial_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors that give the layer's update on the unmodified base: [A; A0] and [B, -B0] (rank 2r) for a
    PiSSA / OLoRA start, (A, B) otherwise. Used with the scale of `portable_alpha`."""
    if initial_a is None or initial_b is None:
        return weight_a, weight_b
    return (torch.cat([weight_a, initial_a.to(weight_a.dtype)], dim=0),
            torch.cat([weight_b, -initial_b.to(weight_b.dtype)], dim=1))


def portable_alpha(alpha: float, use_rslora: bool) -> float:
    """The alpha that keeps the scale for twice the rank: 2 alpha, or sqrt(2) alpha under rsLoRA (PEFT's rule)."""
    return float(alpha) * (math.sqrt(2.0) if use_rslora else 2.0)


def _kaiming(shape_a: tuple[int, int], shape_b: tuple[int, int],
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Kaiming-uniform (PEFT's default, as nn.Linear), B = 0."""
    weight_a = torch.empty(shape_a, dtype=torch.float32)
    nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5), generator=generator)
    return weight_a, torch.zeros(shape_b, dtype=torch.float32)


def _gaussian(shape_a: tuple[int, int], shape_b: tuple[int, int],
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A ~ N(0, 1/r) (PEFT's "gaussian"), B = 0."""
    weight_a = torch.empty(shape_a, dtype=torch.float32)
    nn.init.normal_(weight_a, mean=0.0, std=1.0 / shape_a[0], generator=generator)
    return weight_a, torch.zeros(shape_b, dtype=torch.float32)


def _orthogonal(shape_a: tuple[int, int], shape_b: tuple[int, int],
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's "orthogonal": both factors non-zero, yet B A = 0. A random r x r orthogonal Q (QR of a Gaussian)
    gives A its even-indexed rows and B its odd-indexed rows, each mixed by a Gaussian of half the rank and
    divided by 10: B A = G_b Q_odd Q_even^T G_a = 0 (to rounding), as distinct rows of Q are orthogonal.
    Needs an even r."""
    rank, half = shape_a[0], shape_a[0] // 2
    if rank % 2:
        raise ConfigError(f"init_lora_weights='orthogonal' needs an even lora_rank, got {rank}")
    q, _ = torch.linalg.qr(torch.randn(rank, rank, generator=generator))
    weight_a = (torch.randn(shape_a[1], half, generator=generator) @ q[0::2]).T / 10.0
    weight_b = (torch.randn(half, shape_b[0], generator=generator).T @ q[1::2]) / 10.0  # PEFT's draw order
    return weight_a.contiguous(), weight_b.contiguous()


# init name -> how it fills (A (r, in), B (out, r)) in float32 on the CPU; B A must start at zero (inits that start
# from the base weight, CHANGES_BASE, are `initial_factors`). Adding an init = one function here, its name in
# `choices.LORA_INITS` and in `PEFT_INIT`.
ZERO_START_INITS = {"kaiming": _kaiming, "gaussian": _gaussian, "orthogonal": _orthogonal}
# init name -> what PEFT's LoraConfig.init_lora_weights says for it (export writes it, import reads it back).
PEFT_INIT: dict[str, object] = {"kaiming": True, "gaussian": "gaussian", "orthogonal": "orthogonal", "pissa": "pissa",
                                "olora": "olora"}
def init_from_peft(value: object) -> str | None:
    """Our init name for PEFT's `init_lora_weights` value, or None when it has no equivalent here."""
    if value is False:  # PEFT's "no LoRA init" (B random too, for tests): a trained file loads as any other
        return "kaiming"
    for name, peft_value in PEFT_INIT.items():
        if type(peft_value) is type(value) and peft_value == value:
            return name
    return None


def peft_init_value(init: str) -> object:
    """PEFT's `init_lora_weights` for an adapter file written after an `init` start: a PiSSA / OLoRA adapter
    is saved converted (a plain rank-2r update for the unmodified base, as PEFT writes it), hence True."""
    return True if init in CHANGES_BASE else PEFT_INIT[init]


@torch.no_grad()
def init_factors(weight_a: torch.Tensor, weight_b: torch.Tensor, init: str,
                 generator: torch.Generator | None = None) -> None:
    """Fill A (r, in) and B (out, r) in place for `init`; the update B A starts at zero either way.

    The factors are drawn on the CPU in float32 and then moved to their device and dtype, so a CPU generator
    works, and gives the same factors whatever the base's device (CUDA for QLoRA, meta for skeletons).
    """
    fill = ZERO_START_INITS.get(init) if isinstance(init, str) else None
    if fill is None or init not in INIT_CHOICES:
        raise ConfigError(f"init_lora_weights={init!r}; expected one of {list(ZERO_START_INITS)} here "
                          f"({list(CHANGES_BASE)} start from the base weight: initial_factors)")
    if weight_a.is_meta and generator is None:  # shapes only (adapter skeletons): leave the global RNG alone
        return
    draw_a, draw_b = fill(tuple(weight_a.shape), tuple(weight_b.shape), generator)
    if weight_a.is_meta:  # the generator advanced as for a real base; nothing to fill
        return
    weight_a.copy_(draw_a.to(device=weight_a.device, dtype=weight_a.dtype))
    weight_b.copy_(draw_b.to(device=weight_b.device, dtype=weight_b.dtype))


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
