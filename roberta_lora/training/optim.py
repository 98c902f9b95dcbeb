"""The optimizer of a run: AdamW over what trains, weight decay on matrices only.

As in nanoGPT and the transformers Trainer, decoupled weight decay applies to weight matrices
(LoRA factors, head and, for method "full", encoder weights) and never to biases, LayerNorm
parameters or embeddings-like vectors: decaying those pulls them towards zero, which for a
LayerNorm gain means towards switching the layer off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from roberta_lora.model.quantization import check_qlora_options


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     loraplus_lr_ratio: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: matrices (>= 2 dims) decay, the rest does not.

    With `loraplus_lr_ratio` (LoRA+, Hayou et al. 2024) the LoRA B factors form their own group at
    `lr * loraplus_lr_ratio`; everything else keeps `lr`. (PEFT's `create_loraplus_optimizer` also raises
    every 1-D parameter, biases and LayerNorms included, to B's rate; here only B, as in the paper.)
    Empty groups are left out.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in named if p.ndim >= 2 and not _is_norm_or_embedding(model, name)]
    ids = {id(p) for p in decay}
    no_decay = [p for _, p in named if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if loraplus_lr_ratio is not None:
        if lr is None:
            raise ValueError("parameter_groups: loraplus_lr_ratio needs lr")
        factors_b = {id(p) for name, p in named if name.endswith(".lora_B.weight")}
        groups = [{**group, "params": [p for p in group["params"] if id(p) not in factors_b], "lr": lr}
                  for group in groups]
        groups.append({"params": [p for _, p in named if id(p) in factors_b], "weight_decay": weight_decay,
                       "lr": lr * loraplus_lr_ratio})
    return [group for group in groups if group["params"]]


def _is_norm_or_embedding(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return isinstance(owner, (nn.LayerNorm, nn.Embedding))


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 5e-4, weight_decay: float = 0.0,
                    loraplus_lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """AdamW ("adamw", torch's), or bitsandbytes' "adamw_8bit" / "paged_adamw_8bit" (QLoRA's paged
    optimizer; CUDA only, checked first), over `parameter_groups(model, weight_decay, lr, loraplus_lr_ratio)`."""
    check_qlora_options(None, name)
    groups = parameter_groups(model, weight_decay, lr, loraplus_lr_ratio)
    if name == "adamw":
        # The fused kernel is a single launch per step on CUDA; on CPU the default is as fast.
        return torch.optim.AdamW(groups, lr=lr, fused=torch.cuda.is_available() or None)
    return _bitsandbytes_adamw(groups, name, lr)


def _bitsandbytes_adamw(groups: Iterable[dict[str, Any]], name: str, lr: float) -> torch.optim.Optimizer:
    import bitsandbytes as bnb  # only on CUDA machines, after check_qlora_options

    cls = bnb.optim.AdamW8bit if name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return cls(groups, lr=lr)
