"""QLoRA: a 4-bit (NF4) or 8-bit frozen base through bitsandbytes, and bitsandbytes' 8-bit optimizers.

As in the QLoRA paper: the base's linear weights are stored as NF4 with double quantization
and computed in bfloat16; everything that trains (LoRA factors, biases, LayerNorms, the head)
stays in full precision, and `LoraLinear` only ever *calls* the quantized layer. Embeddings,
LayerNorms and biases are not quantized, and they are all `base_fingerprint` reads, so it is the same
as for the full-precision base and a QLoRA adapter loads on a full-precision base like any other.

bitsandbytes needs a CUDA GPU. Without one (or without the package) every entry point here
raises ConfigError at once, before any data is read or weights are loaded.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from roberta_lora.choices import OPTIMIZERS as OPTIMIZER_CHOICES  # noqa: E402
from roberta_lora.errors import ConfigError, first_line
from roberta_lora.model.families import checkpoint_family

QUANTIZE_CHOICES = ("4bit", "8bit")


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (bitsandbytes' 4/8-bit kernels need one)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "the bitsandbytes package is not installed (pip install bitsandbytes)"
    return None


def check_qlora_options(quantize: str | None = None, optim: str = "adamw") -> None:
    """Validate --quantize / --optim and raise ConfigError now if they need what this machine lacks."""
    problems = []
    if quantize not in (None, "none", *QUANTIZE_CHOICES):
        problems.append(f"quantize={quantize!r} (expected one of {list(QUANTIZE_CHOICES)} or none)")
    if optim not in OPTIMIZER_CHOICES:
        problems.append(f"optim={optim!r} (expected one of {list(OPTIMIZER_CHOICES)})")
    if problems:
        raise ConfigError("invalid QLoRA options: " + "; ".join(problems))
    asked = [f"--quantize {quantize}"] if quantize not in (None, "none") else []
    asked += [f"--optim {optim}"] if optim != "adamw" else []
    reason = bitsandbytes_problem() if asked else None
    if reason:
        raise ConfigError(
            f"{' and '.join(asked)} need bitsandbytes on a CUDA GPU, but {reason}. Run without them "
            "(full-precision base, --optim adamw) or on a machine with an NVIDIA GPU"
        )


def quantization_config(quantize: str) -> Any:
    """transformers' BitsAndBytesConfig for "4bit" (NF4, double quantization, bf16 compute) or "8bit"."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_quantized_encoder(model_id: Any, quantize: str, attn_implementation: str | None = None) -> PreTrainedModel:
    """Load an encoder checkpoint of a supported family with its linear layers quantized, on the current CUDA device.

    Non-quantized tensors (embeddings, LayerNorms, biases) are loaded in float32, so the ones
    an adapter trains keep full precision.
    """
    check_qlora_options(quantize)
    if isinstance(model_id, (PretrainedConfig, PreTrainedModel)) or model_id is None:
        raise ConfigError(f"--quantize {quantize} loads a checkpoint through bitsandbytes; pass a hub id or a "
                          f"local checkpoint directory, not a {type(model_id).__name__}")
    family = checkpoint_family(str(model_id))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return family.encoder.from_pretrained(
            str(model_id), **family.no_pooler, quantization_config=quantization_config(quantize),
            dtype=torch.float32, device_map={"": torch.cuda.current_device()}, **kwargs,
        )
    except OSError as error:
        where = "a local directory" if os.path.isdir(str(model_id)) else "not a local directory"
        raise ConfigError(f"could not load the base model {str(model_id)!r} ({where}; {first_line(error, limit=None)})") from None
