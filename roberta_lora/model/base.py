"""The frozen base: a RoBERTa encoder (no pooler) from a hub id, a local folder, a config or a model."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import RobertaConfig, RobertaModel

from roberta_lora.errors import ConfigError

BaseSpec = str | Path | RobertaConfig | RobertaModel


def load_base_encoder(
    model_id: BaseSpec, attn_implementation: str | None = None, quantize: str | None = None
) -> RobertaModel:
    """A RoBERTa encoder (no pooler) from a hub id, a local checkpoint dir, a config (random weights) or a model.

    `quantize` ("4bit" or "8bit") loads the checkpoint's linear layers through bitsandbytes (CUDA only).
    """
    if quantize not in (None, "none"):
        from roberta_lora.model.quantization import load_quantized_encoder  # bitsandbytes only when asked for

        return load_quantized_encoder(model_id, quantize, attn_implementation)
    if isinstance(model_id, RobertaModel):
        return model_id
    if isinstance(model_id, RobertaConfig):
        config = model_id
        if attn_implementation is not None:
            config = RobertaConfig(**{**config.to_dict(), "_attn_implementation": attn_implementation})
        return RobertaModel(config, add_pooling_layer=False)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return RobertaModel.from_pretrained(str(model_id), add_pooling_layer=False, **kwargs)
    except OSError as error:
        # os.path.isdir, not Path.is_dir: it returns False (no OSError) for names the OS refuses, e.g. too long.
        local_hint = "it is not a local directory" if not os.path.isdir(str(model_id)) else "the directory is incomplete"
        raise ConfigError(
            f"could not load the base model {str(model_id)!r} ({local_hint}; {str(error).splitlines()[0]}). "
            "Without network access pass a local checkpoint directory, e.g. --model /path/to/roberta-base "
            "(a folder with config.json and model.safetensors)"
        ) from None
