"""Which tensors an adapter holds, and their names: what trains is exactly what is saved.

Names are those of `LoraWrapperRoberta.named_parameters()`: "roberta.<encoder path>" for the
encoder of every family (LoRA factors, and the biases / LayerNorms / embeddings the config trains)
and "classifier.*" or "qa_outputs.*" for the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from roberta_lora.lora.injection import inject_lora
from roberta_lora.lora.layer import LoraLinear
from roberta_lora.lora.variants import EXTRA_TENSOR_NAMES
from roberta_lora.model.config import AdapterConfig, head_attribute
from roberta_lora.model.families import build_encoder
from roberta_lora.model.heads import build_head

_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", *(f".{name}" for name in EXTRA_TENSOR_NAMES))


def lora_options(config: AdapterConfig) -> dict[str, Any]:
    """What `inject_lora` needs besides targets, rank, alpha and dropout to build layers that hold `config`'s
    tensors: the variant and its options. Not the initialisation, which only a new training run asks for."""
    return {"variant": config.variant, "use_rslora": config.use_rslora, "layers": config.layers_to_transform}


def adapter_parameters(encoder: nn.Module, head: nn.Module, config: AdapterConfig) -> dict[str, nn.Parameter]:
    """The parameters an adapter trains and saves, by name (see the module docstring).

    method "full": everything; "head": the head only; "lora": LoRA factors, the head, and the
    biases / LayerNorms / embeddings the config's train_* flags ask for.
    """
    selected = {f"roberta.{n}": p for n, p in encoder.named_parameters()} if config.method == "full" else {}
    if config.method == "lora":
        for path, module in encoder.named_modules():
            if isinstance(module, LoraLinear):
                selected[f"roberta.{path}.lora_A.weight"] = module.lora_A.weight
                selected[f"roberta.{path}.lora_B.weight"] = module.lora_B.weight
                selected.update({f"roberta.{path}.{name}": tensor for name, tensor in module.extra.items()})
            elif config.train_layer_norms and isinstance(module, nn.LayerNorm):
                selected.update({f"roberta.{path}.{n}": p for n, p in module.named_parameters(recurse=False)})
            elif config.train_embeddings and isinstance(module, nn.Embedding):
                selected[f"roberta.{path}.weight"] = module.weight
            elif config.train_biases and isinstance(module, nn.Linear) and module.bias is not None:
                selected[f"roberta.{path}.bias"] = module.bias
    prefix = head_attribute(config.task_type)
    selected.update({f"{prefix}.{n}": p for n, p in head.named_parameters()})
    return selected


def is_lora_factor(name: str) -> bool:
    return name.endswith(_LORA_SUFFIXES)


def base_name(name: str) -> str | None:
    """An adapter tensor's name in a plain, LoRA-free encoder, or None for LoRA factors and heads.

    "roberta.encoder.layer.0.attention.self.query.base_layer.bias" -> "encoder.layer.0.attention.self.query.bias".
    `base_layer` is the attribute under which `LoraLinear` keeps the wrapped layer.
    """
    if not name.startswith("roberta.") or is_lora_factor(name):
        return None
    return name.removeprefix("roberta.").replace(".base_layer.", ".")


def overwritten_base_names(names: object) -> frozenset[str]:
    """The plain names of the base tensors among an adapter's tensor names (biases, LayerNorms, ...)."""
    return frozenset(plain for plain in map(base_name, names) if plain is not None)  # type: ignore[call-overload]


def lora_spec(config: AdapterConfig) -> tuple | None:
    """What decides the LoRA layers' shapes (None: no LoRA layers)."""
    if config.method != "lora":
        return None
    layers = None if config.layers_to_transform is None else tuple(sorted(config.layers_to_transform))
    return (tuple(config.targets), config.lora_rank, float(config.lora_alpha), config.variant, config.use_rslora, layers)


def head_spec(config: AdapterConfig) -> tuple:
    """What decides the head's modules and shapes."""
    return ("qa",) if config.task_type != "glue" else ("glue", config.head, config.num_classes)


# Skeletons by what decides an adapter's tensor names and shapes: building one (a meta encoder
# plus injection) is most of the cost of loading a named adapter, and a server loads many of one shape.
_SKELETONS: dict[tuple, dict[str, torch.Tensor]] = {}


def expected_tensors(config: AdapterConfig, encoder_config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """Names and shapes (on the meta device, nothing allocated) of the tensors an adapter must hold."""
    key = (config.method, lora_spec(config), head_spec(config), config.train_biases, config.train_layer_norms,
           config.train_embeddings, encoder_config.to_json_string())
    if key not in _SKELETONS:
        _SKELETONS[key] = _build_skeleton(config, encoder_config)
    return dict(_SKELETONS[key])


@torch.no_grad()
def _build_skeleton(config: AdapterConfig, encoder_config: PretrainedConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        encoder = build_encoder(encoder_config)
        if config.method == "lora":
            inject_lora(encoder, config.targets, config.lora_rank, config.lora_alpha, config.lora_dropout,
                        **lora_options(config))
        head = build_head(config, encoder_config)
    return {name: p.detach() for name, p in adapter_parameters(encoder, head, config).items()}
