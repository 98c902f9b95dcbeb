"""`LoraRobertaSelfAttention`: transformers' RoBERTa self-attention with LoRA on its projections.

It subclasses `RobertaSelfAttention`, keeps the original `query` / `key` / `value` modules and
wraps the targeted ones in `LoraLinear`. Its forward pass is the inherited one (eager or sdpa,
whatever the config says), which calls `self.query(...)` and `self.value(...)`: now LoRA layers.

The module owns the LoRA branches of its projections together. Query and value read the same
hidden states, so before delegating it computes every adapted projection's first matmul at once,
as litgpt's fused qkv LoRA does: one (sum of ranks x in) matmul on one dropout mask (the branches
therefore share their mask, unlike PEFT's separate layers). It hands the results to its layers
explicitly for the duration of this one call (`lora.layer.shared_branches`, a context variable:
each concurrent call sees its own, nothing stays behind), and a layer asked about any other input
inside that call raises instead of silently recomputing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

from roberta_lora.errors import ConfigError
from roberta_lora.lora.layer import LoraLinear, shared_branches
from roberta_lora.lora.targets import DEFAULT_TARGETS, SELF_ATTENTION_TARGETS


def rebuild_self_attention(attention: RobertaSelfAttention, cls: type[RobertaSelfAttention]) -> RobertaSelfAttention:
    """A `cls` instance that takes over `attention`'s projections and dropout (the same objects).

    The parent is built on the meta device: its freshly drawn projections are replaced at once,
    and meta allocation makes that free even for roberta-large.
    """
    with torch.device("meta"):
        new = cls(attention.config, is_causal=attention.is_causal, layer_idx=attention.layer_idx)
    new.query, new.key, new.value, new.dropout = attention.query, attention.key, attention.value, attention.dropout
    new.train(attention.training)
    return new


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
        bad = [t for t in targets if t not in SELF_ATTENTION_TARGETS]
        if bad:
            raise ConfigError(f"self-attention can adapt {list(SELF_ATTENTION_TARGETS)}, got {bad}")
        new = rebuild_self_attention(attention, cls)
        for name in targets:
            setattr(new, name, LoraLinear(getattr(attention, name), rank, alpha, dropout, generator))
        return new  # type: ignore[return-value]

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        layers = self.shared_lora_layers()
        if not layers:
            return super().forward(hidden_states, *args, **kwargs)
        # (..., in) -> (..., sum of ranks), one matmul; each layer gets its slice.
        lora_input, extra_scale = layers[0].lora_input(hidden_states)
        stacked_a = torch.cat([layer.lora_A.weight for layer in layers])
        hiddens = torch.nn.functional.linear(lora_input, stacked_a).split([layer.rank for layer in layers], dim=-1)
        branches = {layer: (hidden_states, hidden, extra_scale) for layer, hidden in zip(layers, hiddens, strict=True)}
        with shared_branches(branches):
            return super().forward(hidden_states, *args, **kwargs)

    def shared_lora_layers(self) -> list[LoraLinear]:
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
