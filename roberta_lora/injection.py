"""Putting LoRA into a RoBERTa encoder: `LoraRobertaSelfAttention` and target matching.

Self-attention is swapped for `LoraRobertaSelfAttention`, a subclass of transformers'
`RobertaSelfAttention` that keeps the original `query` / `key` / `value` modules and wraps
the targeted ones in `LoraLinear`. Its forward pass is the inherited one (eager or sdpa,
whatever the config says): it calls `self.query(...)` and `self.value(...)`, which are now
LoRA layers. Before delegating, it computes the LoRA branches' first matmul for all of its
adapted projections at once, as litgpt's fused qkv LoRA does: query and value read the same
hidden states, so one (2r x in) matmul and one dropout mask serve both (the masks of the two
branches are therefore the same draw, not independent ones as in PEFT). The feed-forward and
attention-output projections, when targeted, are wrapped in place. Targets are matched by exact
module path inside `encoder.layer.<i>`, so a head's `dense` layer can never be picked up by
accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

from roberta_lora.errors import ConfigError
from roberta_lora.lora import LoraLinear

# Short target name -> module path inside one `encoder.layer.<i>`.
TARGET_PATHS: dict[str, str] = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
DEFAULT_TARGETS: tuple[str, ...] = ("query", "value")
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "qv": DEFAULT_TARGETS,
    "all-linear": tuple(TARGET_PATHS),
    "all_linear": tuple(TARGET_PATHS),
}
_SELF_ATTENTION_TARGETS = ("query", "key", "value")
_LAYER_PATH = re.compile(r"^(?:.*\.)?encoder\.layer\.(\d+)\.(.+)$")


def resolve_targets(targets: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalise a target list: None -> query+value; "all-linear" -> all six; "query,value" -> a tuple.

    Raises ConfigError listing the valid names when one is unknown.
    """
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        names = TARGET_ALIASES.get(targets) or tuple(t.strip() for t in targets.split(",") if t.strip())
    else:
        names = tuple(targets)
    expanded: list[str] = []
    for name in names:
        for part in TARGET_ALIASES.get(name, (name,)):
            if part not in expanded:
                expanded.append(part)
    unknown = [n for n in expanded if n not in TARGET_PATHS]
    if unknown or not expanded:
        raise ConfigError(
            f"unknown LoRA target(s) {unknown or list(names)}; expected names from {list(TARGET_PATHS)} "
            f"or one of the aliases {list(TARGET_ALIASES)} (e.g. --targets query,value or --targets all-linear)"
        )
    # Canonical order, so the same set always gives the same config and tensor names.
    return tuple(t for t in TARGET_PATHS if t in expanded)


class LoraRobertaSelfAttention(RobertaSelfAttention):
    """`RobertaSelfAttention` whose targeted projections (default query and value) carry LoRA.

    Build it with `from_attention`, which keeps the original module's weights (the same tensor
    objects, nothing copied). The forward pass is inherited unchanged.
    """

    @classmethod
    def from_attention(
        cls,
        attention: RobertaSelfAttention,
        targets: Sequence[str] = DEFAULT_TARGETS,
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> LoraRobertaSelfAttention:
        """Wrap `attention`'s projections named in `targets` (a subset of query, key, value)."""
        bad = [t for t in targets if t not in _SELF_ATTENTION_TARGETS]
        if bad:
            raise ConfigError(f"self-attention can adapt {list(_SELF_ATTENTION_TARGETS)}, got {bad}")
        # Build the parent on the meta device: its freshly drawn projections would be thrown
        # away immediately, and meta allocation makes that free even for roberta-large.
        with torch.device("meta"):
            new = cls(attention.config, is_causal=attention.is_causal, layer_idx=attention.layer_idx)
        new.query, new.key, new.value, new.dropout = attention.query, attention.key, attention.value, attention.dropout
        new.train(attention.training)
        for name in targets:
            setattr(new, name, LoraLinear(getattr(attention, name), rank, alpha, dropout, generator))
        return new

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        layers = self._fusable_lora_layers()
        if not layers:
            return super().forward(hidden_states, *args, **kwargs)
        # (..., in) -> (..., sum of ranks), one matmul; each layer gets its slice.
        lora_input, extra_scale = layers[0].lora_input(hidden_states)
        stacked_A = torch.cat([layer.lora_A.weight for layer in layers])
        hiddens = torch.nn.functional.linear(lora_input, stacked_A).split([layer.rank for layer in layers], dim=-1)
        for layer, hidden in zip(layers, hiddens, strict=True):
            layer.use_precomputed(hidden_states, hidden, extra_scale)
        try:
            return super().forward(hidden_states, *args, **kwargs)
        finally:
            for layer in layers:
                layer.forget_precomputed()  # still set only if the parent did not call the layer

    def _fusable_lora_layers(self) -> list[LoraLinear]:
        """The adapted, unmerged projections when two or more of them can share one matmul: same
        dropout, same factor dtype; [] otherwise (each layer then computes its own branch)."""
        layers = [
            module for module in (self.query, self.key, self.value)
            if isinstance(module, LoraLinear) and not module.merged
        ]
        if len(layers) < 2:
            return []
        first = layers[0]
        if any(layer.dropout != first.dropout or layer.lora_A.weight.dtype != first.lora_A.weight.dtype
               for layer in layers):
            return []
        return layers


def inject_lora(
    encoder: nn.Module,
    targets: Sequence[str] = DEFAULT_TARGETS,
    rank: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Swap every `RobertaSelfAttention` below `encoder` and wrap the other targeted linears.

    Returns the module paths that now carry LoRA (e.g. "encoder.layer.0.attention.self.query").
    Raises ConfigError when nothing matched, naming the targets and the linear layers present.
    """
    attention_targets = [t for t in targets if t in _SELF_ATTENTION_TARGETS]
    other_paths = {TARGET_PATHS[t] for t in targets if t not in _SELF_ATTENTION_TARGETS}
    replaced: list[str] = []
    # Collect first, then replace: mutating modules while iterating named_modules is unsafe.
    for path, module in list(encoder.named_modules()):
        match = _LAYER_PATH.match(path)
        if match is None:
            continue
        inner = match.group(2)
        if attention_targets and inner == "attention.self" and isinstance(module, RobertaSelfAttention):
            if isinstance(module, LoraRobertaSelfAttention):
                raise ConfigError(f"{path} already carries LoRA; build a fresh base model instead of injecting twice")
            _set_submodule(
                encoder,
                path,
                LoraRobertaSelfAttention.from_attention(module, attention_targets, rank, alpha, dropout, generator),
            )
            replaced.extend(f"{path}.{t}" for t in attention_targets)
        elif inner in other_paths:
            if isinstance(module, LoraLinear):
                raise ConfigError(f"{path} already carries LoRA; build a fresh base model instead of injecting twice")
            _set_submodule(encoder, path, LoraLinear(module, rank, alpha, dropout, generator))
            replaced.append(path)
    if not replaced:
        linears = sorted(p for p, m in encoder.named_modules() if isinstance(m, nn.Linear))
        raise ConfigError(
            f"no module matched the LoRA targets {list(targets)} (paths {[TARGET_PATHS[t] for t in targets]} "
            f"inside encoder.layer.<i>); linear layers present: {linears[:12]}{' ...' if len(linears) > 12 else ''}"
        )
    return replaced


def lora_layers(module: nn.Module) -> dict[str, LoraLinear]:
    """Every `LoraLinear` below `module`, by path."""
    return {path: m for path, m in module.named_modules() if isinstance(m, LoraLinear)}


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)
