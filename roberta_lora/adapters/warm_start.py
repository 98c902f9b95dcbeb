"""`--init-from`: start training from another task's adapter (the LoRA paper starts RTE, MRPC
and STS-B from the MNLI adapter). LoRA factors, biases and LayerNorms are copied; the head only
when it has the same kind, shape and label names, otherwise it keeps its fresh initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from roberta_lora.choices import LORA_INITS_FROM_BASE
from roberta_lora.errors import AdapterError
from roberta_lora.model.adapter_files import read_adapter_tensors
from roberta_lora.model.config import head_attribute, read_adapter_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

logger = logging.getLogger(__name__)


def warm_start_from_adapter(model: LoraWrapperRoberta, directory: Path, allow_base_mismatch: bool = False) -> list[str]:
    """Copy the compatible tensors of the adapter in `directory` into `model`; returns their names."""
    config, digest = read_adapter_config(directory)
    ours = model.adapter_config
    model.check_base(config, f"--init-from {directory}", allow_base_mismatch)
    if ours.method == "lora" and (config.lora_rank, config.targets, float(config.lora_alpha)) != (
            ours.lora_rank, ours.targets, float(ours.lora_alpha)):
        # alpha too: the same factors under another alpha / r would silently rescale every update.
        raise AdapterError(
            f"--init-from adapter {directory} has rank {config.lora_rank}, alpha {config.lora_alpha:g} on "
            f"{config.targets}; this run has rank {ours.lora_rank}, alpha {ours.lora_alpha:g} on {ours.targets}. "
            f"Pass --rank {config.lora_rank} --alpha {config.lora_alpha:g} --targets {','.join(config.targets)}"
        )
    if ours.method == "lora" and (config.variant, config.use_rslora) != (ours.variant, ours.use_rslora):
        raise AdapterError(
            f"--init-from adapter {directory} is {_kind(config)}; this run trains {_kind(ours)}: the same tensors "
            f"would compute another update. Pass {'--use-dora' if config.use_dora else '--no-use-dora'} "
            f"{'--use-rslora' if config.use_rslora else '--no-use-rslora'}"
        )
    if ours.method == "lora" and ours.init_lora_weights in LORA_INITS_FROM_BASE:
        raise AdapterError(
            f"--init-from adapter {directory}: this run's LoRA starts from the base weight "
            f"(init_lora_weights={ours.init_lora_weights!r}) and subtracts that start, so copied factors would "
            "compute another update. Pass --init-lora-weights kaiming (a warm start replaces the start anyway)")
    tensors = read_adapter_tensors(directory, digest)
    same_head = (config.task_type, config.head, config.num_classes, config.label_names) == (
        ours.task_type, ours.head, ours.num_classes, ours.label_names)
    head_prefix = head_attribute(ours.task_type) + "."
    live = {name: p for name, p in model.named_parameters() if p.requires_grad}
    copied = []
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name.startswith(tuple(head_attribute(t) + "." for t in ("glue", "squad_v1"))) and not (
                    same_head and name.startswith(head_prefix)):
                continue
            if name in live and tuple(live[name].shape) == tuple(tensor.shape):
                live[name].copy_(tensor.to(live[name].dtype))
                copied.append(name)
    logger.info("warm start from %s: copied %d tensors; head %s", directory, len(copied),
                "copied" if same_head else f"re-initialised (adapter labels {config.label_names or config.num_classes}"
                f" vs {ours.label_names or ours.num_classes})")
    return copied


def _kind(config) -> str:
    return f"{config.variant!r}" + (" with rsLoRA scaling" if config.use_rslora else "")
