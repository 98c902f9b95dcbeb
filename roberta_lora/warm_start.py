"""`--init-from`: start training from another task's adapter (the LoRA paper starts RTE, MRPC
and STS-B from the MNLI adapter). LoRA factors, biases and LayerNorms are copied; the head only
when it has the same kind, shape and label names, otherwise it keeps its fresh initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from roberta_lora.adapter_io import read_adapter_config, read_adapter_tensors
from roberta_lora.errors import AdapterError
from roberta_lora.model import LoraWrapperRoberta

logger = logging.getLogger(__name__)


def warm_start_from_adapter(model: LoraWrapperRoberta, directory: Path, allow_base_mismatch: bool = False) -> list[str]:
    """Copy the compatible tensors of the adapter in `directory` into `model`; returns their names."""
    config, digest = read_adapter_config(directory)
    ours = model.adapter_config
    if config.base_fingerprint and ours.base_fingerprint and config.base_fingerprint != ours.base_fingerprint:
        message = (f"--init-from adapter {directory} was trained on base {config.base_model!r} (fingerprint "
                   f"{config.base_fingerprint}), this run uses {ours.base_model!r} (fingerprint {ours.base_fingerprint})")
        if not allow_base_mismatch:
            raise AdapterError(message + "; use the same --model or pass --allow-base-mismatch")
        logger.warning("%s; continuing because of --allow-base-mismatch", message)
    if (config.lora_rank, config.targets) != (ours.lora_rank, ours.targets) and ours.method == "lora":
        raise AdapterError(
            f"--init-from adapter {directory} has rank {config.lora_rank} on {config.targets}, this run "
            f"rank {ours.lora_rank} on {ours.targets}; pass --rank {config.lora_rank} --targets {','.join(config.targets)}"
        )
    tensors = read_adapter_tensors(directory, digest)
    same_head = (config.task_type, config.head, config.num_classes, config.label_names) == (
        ours.task_type, ours.head, ours.num_classes, ours.label_names)
    head_prefix = "classifier." if ours.task_type == "glue" else "qa_outputs."
    live = {name: p for name, p in model.named_parameters() if p.requires_grad}
    copied = []
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name.startswith(("classifier.", "qa_outputs.")) and not (same_head and name.startswith(head_prefix)):
                continue
            if name in live and tuple(live[name].shape) == tuple(tensor.shape):
                live[name].copy_(tensor.to(live[name].dtype))
                copied.append(name)
    logger.info("warm start from %s: copied %d tensors; head %s", directory, len(copied),
                "copied" if same_head else f"re-initialised (adapter labels {config.label_names or config.num_classes}"
                f" vs {ours.label_names or ours.num_classes})")
    return copied
