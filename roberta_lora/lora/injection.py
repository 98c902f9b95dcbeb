"""Putting LoRA into an encoder of any supported family and taking it out again.

Targets are matched by exact module path inside the family's layer list (`encoder.layer.<i>`, or
`transformer.layer.<i>` for DistilBERT; see `targets.LAYOUTS`), so a head's `dense` layer can
never be picked up by accident. The self-attention module is swapped for its LoRA subclass
(`attention.LORA_ATTENTION_CLASSES`) when query, key or value is targeted; the other targeted
projections are wrapped in place. `strip_lora` undoes all of it, `unwrap_lora` / `rewrap_lora`
only for a while.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.lora.attention import LoraSelfAttentionMixin, lora_attention_class
from roberta_lora.lora.layer import LoraLinear
from roberta_lora.lora.targets import DEFAULT_TARGETS, SELF_ATTENTION_TARGETS, layout


def encoder_model_type(encoder: nn.Module) -> str:
    """The family of a transformers encoder (its `config.model_type`); ConfigError when it has none."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    if model_type is None:
        raise ConfigError(f"{type(encoder).__name__} has no transformers config.model_type, so its family (and where "
                          "its projections live) is unknown; pass a transformers encoder such as RobertaModel")
    return model_type


def inject_lora(
    encoder: nn.Module,
    targets: Sequence[str] = DEFAULT_TARGETS,
    rank: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    layers: Sequence[int] | None = None,
    **options: Any,
) -> list[str]:
    """Swap every self-attention module below `encoder` for its LoRA subclass and wrap the other targeted linears.

    The family (and so the module paths) comes from `encoder.config.model_type`. `layers`: only these
    layer indexes (PEFT's layers_to_transform; None: every layer). `options`: LoraLinear's variant,
    use_rslora, init. Returns the module paths that now carry LoRA (e.g.
    "encoder.layer.0.attention.self.query"). Raises ConfigError when nothing matched, naming the targets
    and the linear layers present, or when `layers` names a layer the encoder does not have.
    """
    family = layout(encoder_model_type(encoder))
    layer_path = re.compile(rf"^(?:.*\.)?{re.escape(family.layers)}\.(\d+)\.(.+)$")
    attention_targets = [t for t in targets if t in SELF_ATTENTION_TARGETS]
    other_paths = {family.paths[t] for t in targets if t not in SELF_ATTENTION_TARGETS}
    replaced: list[str] = []
    if layers is not None:
        count = int(getattr(encoder.config, "num_hidden_layers", getattr(encoder.config, "n_layers", 0)))
        outside = sorted({i for i in layers if not 0 <= i < count})
        if outside:
            raise ConfigError(f"layers_to_transform names layers {outside[:8]} but the encoder has {count} "
                              f"(0..{count - 1})")
        wanted = {str(i) for i in layers}
    # Collect first, then replace: mutating modules while iterating named_modules is unsafe. Parents come
    # before children, so DistilBERT's out_lin is wrapped inside the already swapped attention module.
    for path, module in list(encoder.named_modules()):
        match = layer_path.match(path)
        if match is None or (layers is not None and match.group(1) not in wanted):
            continue
        inner = match.group(2)
        if attention_targets and inner == family.self_attention:
            cls = lora_attention_class(module, path)
            set_submodule(encoder, path, cls.from_attention(module, attention_targets, rank, alpha, dropout, generator,
                                                           **options))
            replaced.extend(f"{path}.{family.attribute(t)}" for t in attention_targets)
        elif inner in other_paths:
            if isinstance(module, LoraLinear):
                raise ConfigError(f"{path} already carries LoRA; build a fresh base model instead of injecting twice")
            set_submodule(encoder, path, LoraLinear(module, rank, alpha, dropout, generator, **options))
            replaced.append(path)
    if not replaced:
        linears = sorted(p for p, m in encoder.named_modules() if isinstance(m, nn.Linear))
        raise ConfigError(
            f"no module matched the LoRA targets {list(targets)} (paths {[family.paths[t] for t in targets]} "
            f"inside {family.layers}.<i>); linear layers present: {linears[:12]}{' ...' if len(linears) > 12 else ''}"
        )
    return replaced


def lora_layers(module: nn.Module) -> dict[str, LoraLinear]:
    """Every `LoraLinear` below `module`, by path."""
    return {path: m for path, m in module.named_modules() if isinstance(m, LoraLinear)}


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` at `path` ("encoder.layer.0.attention.self") below `root`."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


def unwrap_lora(encoder: nn.Module) -> dict[str, LoraLinear]:
    """Put each LoRA layer's base layer back in its place; returns the LoRA layers for `rewrap_lora`."""
    layers = lora_layers(encoder)
    for path, layer in layers.items():
        assert not layer.merged, "unmerge before unwrapping"  # the base weight must be the plain one
        set_submodule(encoder, path, layer.base_layer)
    return layers


def rewrap_lora(encoder: nn.Module, layers: dict[str, LoraLinear]) -> None:
    """Undo `unwrap_lora`: the same LoRA layer objects go back where they were."""
    for path, layer in layers.items():
        set_submodule(encoder, path, layer)


def strip_lora(encoder: nn.Module) -> None:
    """Make `encoder` a plain transformers encoder again: no LoraLinear, no LoRA self-attention."""
    unwrap_lora(encoder)
    for path, module in list(encoder.named_modules()):
        if isinstance(module, LoraSelfAttentionMixin):
            set_submodule(encoder, path, module.plain())
