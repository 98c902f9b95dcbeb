"""Combining adapters: a weighted sum of LoRA updates as a new adapter (PEFT's `add_weighted_adapter`).

Pure tensor work on configs and tensors; `AdapterBank.add_weighted_adapter` registers the result.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers import PretrainedConfig

from roberta_lora.errors import ConfigError
from roberta_lora.lora.targets import layout
from roberta_lora.lora.variants import scaling, variant_named
from roberta_lora.model.config import AdapterConfig
from roberta_lora.model.families import intermediate_size
from roberta_lora.model.tensors import is_lora_factor

logger = logging.getLogger(__name__)

COMBINATIONS = ("linear", "cat", "svd")


def combine_lora_factors(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float], scalings: Sequence[float],
    combination_type: str, svd_rank: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine one layer's LoRA factors (A_i (r_i, in), B_i (out, r_i)) into (A, B) used with scaling 1.

    With D = sum_i w_i s_i B_i A_i (s_i = alpha_i / r_i, the weighted sum of the deltas):
    - "cat": B = [B_1 .. B_n], A = [w_1 s_1 A_1; ..; w_n s_n A_n]; B @ A = D exactly (rank sum r_i).
    - "linear": equal ranks; A = sum_i sqrt(w_i s_i) A_i, B = sum_i sqrt(w_i s_i) B_i (PEFT's "linear").
      B @ A = D plus the cross terms B_i A_j (i != j): cheap and same rank, but not the sum.
    - "svd": the best rank-k approximation of D (truncated SVD, k = svd_rank or the largest r_i);
      exact when k >= rank(D).
    """
    if combination_type == "cat":
        a = torch.cat([w * s * a for (a, _), w, s in zip(factors, weights, scalings, strict=True)], dim=0)
        b = torch.cat([b for _, b in factors], dim=1)
        return a, b
    if combination_type == "linear":
        roots = [math.sqrt(w * s) for w, s in zip(weights, scalings, strict=True)]
        a = sum(r * a for (a, _), r in zip(factors, roots, strict=True))
        b = sum(r * b for (_, b), r in zip(factors, roots, strict=True))
        return a, b  # type: ignore[return-value]
    dtype = factors[0][0].dtype
    delta = sum(w * s * (b.float() @ a.float()) for (a, b), w, s in zip(factors, weights, scalings, strict=True))  # (out, in)
    k = svd_rank or max(a.size(0) for a, _ in factors)
    u, sigma, vh = torch.linalg.svd(delta, full_matrices=False)  # type: ignore[arg-type]
    root = sigma[:k].sqrt()  # split the singular values evenly between the factors
    return (root[:, None] * vh[:k]).to(dtype), (u[:, :k] * root).to(dtype)


def combine_adapters(
    names: Sequence[str], configs: Sequence[AdapterConfig], tensors: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float], encoder_config: PretrainedConfig, combination_type: str = "svd",
    svd_rank: int | None = None, average_non_lora: bool = False,
) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """The weighted combination of LoRA adapters on the same targets: (its config, its tensors).

    LoRA factors are combined layer by layer with `combine_lora_factors`; the new adapter has
    rank r' (r for "linear", the sum of ranks for "cat", `svd_rank` for "svd") and alpha = r'.

    Biases, LayerNorms, embeddings and the head are not low-rank, so they cannot be "added".
    By default the combination takes them from the first adapter and logs a warning saying so.
    With `average_non_lora=True` they become the weighted average sum_i w_i t_i / sum_i w_i,
    which needs every adapter to hold the same tensors with the same shapes (same task type,
    number of classes, head kind and train_* flags); otherwise a ConfigError says what differs.

    Raises:
        ConfigError: listing every problem: an unknown combination_type, weights that are not one finite real
            number per adapter (NaN, infinity, booleans, strings, a wrong count) or are all zero, and adapters
            that cannot be combined (other methods, targets or ranks).
    """
    problems = []
    if combination_type not in COMBINATIONS:
        problems.append(f"combination_type={combination_type!r} (expected one of {list(COMBINATIONS)})")
    if isinstance(weights, Iterable) and not isinstance(weights, (str, bytes, Mapping)):
        weights = list(weights)  # a tuple, a numpy array, a generator: read once
    problems += weight_problems(names, weights)
    if problems:
        raise ConfigError("cannot combine adapters: " + "; ".join(problems))
    weights = [float(w) for w in weights]
    _check_combinable(names, configs, weights, combination_type, svd_rank, encoder_config)

    scalings = [scaling(c.lora_alpha, c.lora_rank, c.use_rslora) for c in configs]
    family = layout(encoder_config.model_type)
    combined: dict[str, torch.Tensor] = {}
    layers = configs[0].layers_to_transform
    for layer in range(encoder_config.num_hidden_layers) if layers is None else sorted(layers):
        for target in configs[0].targets:
            path = f"roberta.{family.layers}.{layer}.{family.paths[target]}"
            factors = [(t[f"{path}.lora_A.weight"], t[f"{path}.lora_B.weight"]) for t in tensors]
            a, b = combine_lora_factors(factors, weights, scalings, combination_type, svd_rank)
            combined[f"{path}.lora_A.weight"], combined[f"{path}.lora_B.weight"] = a.contiguous(), b.contiguous()
    rank = combined[f"{path}.lora_A.weight"].size(0)
    combined.update(_combine_rest(names, configs, tensors, weights, average_non_lora))
    # alpha = r' and plain scaling: the combined factors already carry each adapter's scale
    return replace(configs[0], lora_rank=rank, lora_alpha=float(rank), use_rslora=False, metrics={}), combined


def weight_problems(names: Sequence[str], weights: Any) -> list[str]:
    """What is wrong with the weights of a combination of `names`: one real, finite number per adapter, not all 0.

    A NaN or infinite weight makes every combined tensor NaN (or the SVD fail), and weights that are all zero give an
    adapter that changes nothing: both would be registered as if they were a real combination.
    """
    if not isinstance(weights, (list, tuple)):
        return [f"weights={weights!r:.80} (expected a list of numbers, one per adapter, e.g. [0.5, 0.5])"]
    problems = []
    if not names or len(names) != len(weights):
        problems.append(f"{len(names)} adapters and {len(weights)} weights {list(weights)!r:.80} "
                        "(expected one weight per adapter, at least one adapter)")
    not_numbers = [w for w in weights if isinstance(w, bool) or not isinstance(w, numbers.Real)]
    if not_numbers:
        problems.append(f"weights {not_numbers!r:.80} are not numbers (expected real numbers such as 0.5 or -1)")
        return problems
    not_finite = [w for w in weights if not math.isfinite(w)]
    if not_finite:
        problems.append(f"weights {not_finite!r:.80} are not finite (expected finite numbers; NaN or infinity would "
                        "make every combined tensor NaN)")
    elif weights and all(w == 0 for w in weights):
        problems.append(f"weights {list(weights)!r:.80} are all zero (the combination would change nothing; give "
                        "at least one adapter a non-zero weight)")
    return problems


def _check_combinable(names: Sequence[str], configs: Sequence[AdapterConfig], weights: Sequence[float],
                      combination_type: str, svd_rank: int | None, encoder_config: PretrainedConfig) -> None:
    problems = [f"{n!r} has method {c.method!r}" for n, c in zip(names, configs, strict=True) if c.method != "lora"]
    problems += [f"{n!r} adapts {c.targets}, {names[0]!r} {configs[0].targets}"
                 for n, c in zip(names, configs, strict=True) if c.targets != configs[0].targets]
    problems += [f"{n!r} adapts layers {c.layers_to_transform}, {names[0]!r} {configs[0].layers_to_transform}"
                 for n, c in zip(names, configs, strict=True)
                 if sorted(c.layers_to_transform or []) != sorted(configs[0].layers_to_transform or [])]
    for n, c in zip(names, configs, strict=True):
        kind = variant_named(c.variant)
        if not kind.combinable:
            problems.append(f"{n!r} is a {kind.name!r} adapter, whose update is not a low-rank delta that can be "
                            "weighted and added (merge it, or combine plain LoRA adapters)")
    if combination_type == "linear":
        if len({c.lora_rank for c in configs}) > 1:
            problems.append(f"'linear' needs equal ranks, got {[c.lora_rank for c in configs]} (use 'cat' or 'svd')")
        problems += [f"'linear' takes square roots of weight * alpha / r, so weight {w} of {n!r} must be >= 0 "
                     "(use 'cat' or 'svd' for negative weights)" for n, w in zip(names, weights, strict=True) if w < 0]
    if combination_type == "svd" and svd_rank is not None:
        limit = min(encoder_config.hidden_size, intermediate_size(encoder_config))
        if not isinstance(svd_rank, int) or not 1 <= svd_rank <= limit:
            problems.append(f"svd_rank={svd_rank!r} (expected an integer in [1, {limit}])")
    if problems:
        raise ConfigError("cannot combine adapters: " + "; ".join(problems))


def _combine_rest(names: Sequence[str], configs: Sequence[AdapterConfig], tensors: Sequence[dict[str, torch.Tensor]],
                  weights: Sequence[float], average: bool) -> dict[str, torch.Tensor]:
    """Biases, LayerNorms, embeddings and head of the combination (see add_weighted_adapter)."""
    rest = [{n: t for n, t in ts.items() if not is_lora_factor(n)} for ts in tensors]
    if not average:
        if len(names) > 1:
            logger.warning("the combination of %s takes biases, LayerNorms and the head (%s, %s) from %r only; "
                           "pass average_non_lora=True to average them when their shapes match",
                           list(names), configs[0].task or configs[0].task_type, configs[0].head, names[0])
        return {n: t.detach().clone() for n, t in rest[0].items()}
    differences = []
    for name, other in zip(names[1:], rest[1:], strict=True):
        if set(other) != set(rest[0]):
            only = sorted(set(other) ^ set(rest[0]))
            differences.append(f"{name!r} and {names[0]!r} hold different tensors (e.g. {only[:2]})")
        else:
            differences += [f"{n}: {tuple(other[n].shape)} in {name!r} vs {tuple(t.shape)} in {names[0]!r}"
                            for n, t in rest[0].items() if other[n].shape != t.shape]
    total = float(sum(weights))
    if abs(total) < 1e-12:
        differences.append(f"the weights sum to {total}, so no weighted average exists")
    if differences:
        raise ConfigError("cannot average biases, LayerNorms and heads: " + "; ".join(differences[:4])
                          + " (pass average_non_lora=False to take them from the first adapter)")
    return {n: sum((w / total) * r[n] for r, w in zip(rest, weights, strict=True)) for n in rest[0]}  # type: ignore[misc]
