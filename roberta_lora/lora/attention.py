"""Self-attention with LoRA on its projections, for every supported encoder family.

One small subclass per transformers self-attention class (`LoraRobertaSelfAttention` is a
`RobertaSelfAttention`, `LoraBertSelfAttention` a `BertSelfAttention`, ...), all built from
`LoraSelfAttentionMixin`. Each keeps the original projection modules and wraps the targeted ones
in `LoraLinear`. Its forward pass is the inherited transformers one (eager or sdpa, whatever the
config says), which calls `self.query(...)` / `self.q_lin(...)`: now LoRA layers. No forward code
is copied; the mixin only wraps `super().forward`.

The module owns the LoRA branches of its projections together. Query, key and value read the
same hidden states, so before delegating it computes every adapted projection's first matmul at
once, as litgpt's fused qkv LoRA does: one (sum of ranks x in) matmul on one dropout mask (the
branches therefore share their mask, unlike PEFT's separate layers). It hands the results to its
layers explicitly for the duration of this one call (`lora.layer.shared_branches`, a context
variable: each concurrent call sees its own, nothing stays behind), and a layer asked about any
other input inside that call raises instead of silently recomputing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertSelfAttention
from transformers.models.camembert.modeling_camembert import CamembertSelfAttention
from transformers.models.distilbert.modeling_distilbert import DistilBertSelfAttention
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaSelfAttention

from roberta_lora.errors import ConfigError
from roberta_lora.lora.layer import LoraLinear, shared_branches
from roberta_lora.lora.targets import DEFAULT_TARGETS, SELF_ATTENTION_TARGETS, layout

# Constructor arguments (besides the config) of transformers' self-attention classes that a rebuilt
# module takes over from the original, where the class's constructor has them.
_CONSTRUCTOR_ATTRIBUTES = ("is_causal", "layer_idx")


def rebuild_self_attention(attention: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A `cls` instance that takes over `attention`'s child modules (projections and dropout: the same objects).

    The new module is built on the meta device: its freshly drawn projections are replaced at once,
    and meta allocation makes that free even for roberta-large.
    """
    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {name: getattr(attention, name) for name in _CONSTRUCTOR_ATTRIBUTES if name in parameters}
    with torch.device("meta"):
        new = cls(attention.config, **kwargs)
    for name, child in attention.named_children():
        setattr(new, name, child)
    new.train(attention.training)
    return new


class LoraSelfAttentionMixin:
    """LoRA on a transformers self-attention class: mix in before it, set `model_type`.

    Provides `from_attention` (build from a loaded module, keeping its weights), `plain`
    (the transformers module again) and a `forward` that computes the shared LoRA branches and
    then calls the inherited forward.
    """

    model_type: ClassVar[str]  # the family (transformers' config.model_type) whose layout names the projections

    @classmethod
    def from_attention(
        cls,
        attention: nn.Module,
        targets: Sequence[str] = DEFAULT_TARGETS,
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Any:
        """Wrap `attention`'s projections named in `targets` (a subset of query, key, value); the weights
        are the same tensor objects, nothing is copied. `options`: LoraLinear's variant, use_rslora, init."""
        bad = [t for t in targets if t not in SELF_ATTENTION_TARGETS]
        if bad:
            raise ConfigError(f"self-attention can adapt {list(SELF_ATTENTION_TARGETS)}, got {bad}")
        new = rebuild_self_attention(attention, cls)
        for target in targets:
            name = layout(cls.model_type).attribute(target)
            setattr(new, name, LoraLinear(getattr(attention, name), rank, alpha, dropout, generator, **options))
        return new

    def plain(self) -> nn.Module:
        """The transformers self-attention module again, holding this one's children (unwrap LoRA first)."""
        return rebuild_self_attention(self, plain_attention_class(type(self)))  # type: ignore[arg-type]

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        layers = self.shared_lora_layers()
        if not layers:
            return super().forward(hidden_states, *args, **kwargs)  # type: ignore[misc]
        # (..., in) -> (..., sum of ranks), one matmul; each layer gets its slice.
        lora_input, extra_scale = layers[0].lora_input(hidden_states)
        stacked_a = torch.cat([layer.lora_A.weight for layer in layers])
        hiddens = torch.nn.functional.linear(lora_input, stacked_a).split([layer.rank for layer in layers], dim=-1)
        branches = {layer: (hidden_states, hidden, extra_scale) for layer, hidden in zip(layers, hiddens, strict=True)}
        with shared_branches(branches):
            return super().forward(hidden_states, *args, **kwargs)  # type: ignore[misc]

    def shared_lora_layers(self) -> list[LoraLinear]:
        """The adapted, unmerged query / key / value projections when two or more of them can share one
        matmul: same dropout, same factor dtype; [] otherwise (each layer then computes its own branch)."""
        family = layout(self.model_type)
        projections = (getattr(self, family.attribute(t)) for t in SELF_ATTENTION_TARGETS)
        layers = [module for module in projections if isinstance(module, LoraLinear) and not module.merged]
        if len(layers) < 2:
            return []
        first = layers[0]
        if any(layer.dropout != first.dropout or layer.lora_A.weight.dtype != first.lora_A.weight.dtype
               for layer in layers):
            return []
        return layers


class LoraRobertaSelfAttention(LoraSelfAttentionMixin, RobertaSelfAttention):
    """`RobertaSelfAttention` whose targeted projections (default query and value) carry LoRA."""

    model_type = "roberta"


class LoraXLMRobertaSelfAttention(LoraSelfAttentionMixin, XLMRobertaSelfAttention):
    """`XLMRobertaSelfAttention` with LoRA (see `LoraRobertaSelfAttention`)."""

    model_type = "xlm-roberta"


class LoraCamembertSelfAttention(LoraSelfAttentionMixin, CamembertSelfAttention):
    """`CamembertSelfAttention` with LoRA (see `LoraRobertaSelfAttention`)."""

    model_type = "camembert"


class LoraBertSelfAttention(LoraSelfAttentionMixin, BertSelfAttention):
    """`BertSelfAttention` with LoRA (see `LoraRobertaSelfAttention`)."""

    model_type = "bert"


class LoraDistilBertSelfAttention(LoraSelfAttentionMixin, DistilBertSelfAttention):
    """`DistilBertSelfAttention` with LoRA on q_lin / k_lin / v_lin (its out_lin, the attention_output
    target, is wrapped in place like any other linear)."""

    model_type = "distilbert"


# transformers' self-attention class -> its LoRA subclass (exact classes: a subclass of one of these
# could change what forward calls, so it is refused rather than guessed).
LORA_ATTENTION_CLASSES: dict[type[nn.Module], type[LoraSelfAttentionMixin]] = {
    RobertaSelfAttention: LoraRobertaSelfAttention,
    XLMRobertaSelfAttention: LoraXLMRobertaSelfAttention,
    CamembertSelfAttention: LoraCamembertSelfAttention,
    BertSelfAttention: LoraBertSelfAttention,
    DistilBertSelfAttention: LoraDistilBertSelfAttention,
}


def lora_attention_class(attention: nn.Module, path: str) -> type[LoraSelfAttentionMixin]:
    """The LoRA subclass for a loaded self-attention module; ConfigError for one already carrying LoRA
    or of a class without one."""
    if isinstance(attention, LoraSelfAttentionMixin):
        raise ConfigError(f"{path} already carries LoRA; build a fresh base model instead of injecting twice")
    cls = LORA_ATTENTION_CLASSES.get(type(attention))
    if cls is None:
        raise ConfigError(
            f"{path} is a {type(attention).__name__}; LoRA on query / key / value supports "
            f"{[c.__name__ for c in LORA_ATTENTION_CLASSES]}. Load the base with its own transformers class"
        )
    return cls


def plain_attention_class(cls: type[LoraSelfAttentionMixin]) -> type[nn.Module]:
    """The transformers class a LoRA self-attention class extends."""
    return next(base for base, lora in LORA_ATTENTION_CLASSES.items() if lora is cls)
