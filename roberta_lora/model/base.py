"""The frozen base: an encoder of a supported family (no pooler) from a hub id, a local folder, a config or a
model. The family is the checkpoint's `config.model_type` (see `model.families`); each loads with its own
transformers class, and any other model type is refused before weights are read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PretrainedConfig, PreTrainedModel

from roberta_lora.errors import ConfigError, first_line
from roberta_lora.hub import hub_reachable
from roberta_lora.model.families import build_encoder, checkpoint_family, family_of
from roberta_lora.sources import resolve_model

BaseSpec = str | Path | PretrainedConfig | PreTrainedModel


def load_base_encoder(
    model_id: BaseSpec, attn_implementation: str | None = None, quantize: str | None = None,
    with_pooler: bool = False,
) -> PreTrainedModel:
    """An encoder (no pooler) from a hub id, a local checkpoint dir, a config (random weights) or a model.

    The family comes from `config.model_type`: RobertaModel for "roberta", BertModel for "bert",
    DistilBertModel for "distilbert", ... (`model.families.FAMILIES`). `quantize` ("4bit" or "8bit")
    loads the checkpoint's linear layers through bitsandbytes (CUDA only). `with_pooler`: a checkpoint
    folder or hub id of a family whose "roberta" head is the pooler (BERT) is loaded with its pretrained
    pooler, for the head to start from (`encoder.pooler` is None when the checkpoint holds none); the
    caller drops it (`take_pooler`).

    Raises:
        ConfigError: an unsupported model_type (listing the supported ones), a model object that is not
            its family's bare encoder, or a checkpoint that cannot be loaded.
    """
    if isinstance(model_id, (str, Path)):  # a folder, a packaged name (all-MiniLM-L6-v2) or a hub id
        model_id = resolve_model(str(model_id))
    if quantize not in (None, "none"):
        from roberta_lora.model.quantization import load_quantized_encoder  # bitsandbytes only when asked for

        return load_quantized_encoder(model_id, quantize, attn_implementation)
    if isinstance(model_id, PreTrainedModel):
        family = family_of(model_id.config, f"the {type(model_id).__name__} passed as the base")
        if not isinstance(model_id, family.encoder):
            raise ConfigError(f"the base must be the bare encoder ({family.encoder.__name__}), got a "
                              f"{type(model_id).__name__}; pass its .{family.prefix} or a checkpoint folder")
        return model_id
    if isinstance(model_id, PretrainedConfig):
        config = model_id
        family_of(config, f"the {type(config).__name__} passed as the base")
        if attn_implementation is not None:
            config = type(config)(**{**config.to_dict(), "_attn_implementation": attn_implementation})
        return build_encoder(config)
    check_base_folder(str(model_id))
    family = checkpoint_family(str(model_id))  # refuses an unsupported model_type before any weights are read
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    pooler = with_pooler and family.head_dense_is_pooler
    try:
        with _quiet_transformers():  # its load report would bury our one-line error
            encoder, info = family.encoder.from_pretrained(str(model_id), output_loading_info=True,
                                                           **({} if pooler else family.no_pooler), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as error:
        if "mismatched_sizes" in str(error):
            raise ConfigError(f"the weights in {model_id} do not match its config.json (tensors of other shapes); "
                              "is config.json, or the weights file, from another model?") from None
        # A truncated or foreign weights file fails inside transformers / safetensors with many error types.
        # os.path.isdir, not Path.is_dir: it returns False (no OSError) for names the OS refuses, e.g. too long.
        local_hint = "it is not a local directory" if not os.path.isdir(str(model_id)) else "the directory is incomplete"
        raise ConfigError(
            f"could not load the base model {str(model_id)!r} ({local_hint}; {first_line(error)}). "
            "Without network access pass a local checkpoint directory, e.g. --model /path/to/roberta-base "
            "(a folder with config.json and model.safetensors)"
        ) from None
    # transformers fills weights the file lacks with random values and only logs it: refuse instead.
    missing = [name for name in info.get("missing_keys", []) if not name.startswith("pooler.")]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        shown = [str(m) for m in (missing or mismatched)[:3]]
        raise ConfigError(
            f"the weights in {model_id} do not match its config.json ({len(missing)} tensors missing, "
            f"{len(mismatched)} of another shape, e.g. {shown}); is the weights file from another model?"
        )
    if pooler and any(name.startswith("pooler.") for name in info.get("missing_keys", [])):
        encoder.pooler = None  # the checkpoint has none: transformers drew a random one, never use it
    return encoder


def take_pooler(encoder: PreTrainedModel, loaded_here: bool) -> torch.nn.Module | None:
    """The encoder's pretrained pooler (None when it has none). One that `load_base_encoder(with_pooler=True)`
    loaded (`loaded_here`) is removed from the encoder, which is then used without one; a model passed in by
    the caller keeps its own."""
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None and loaded_here:
        encoder.pooler = None
    return pooler


def base_model_type(model_id: BaseSpec) -> str:
    """The family (`config.model_type`) of a base spec, without loading weights; ConfigError for an
    unsupported one (listing the supported ones)."""
    if isinstance(model_id, (PretrainedConfig, PreTrainedModel)):
        config = model_id if isinstance(model_id, PretrainedConfig) else model_id.config
        family_of(config, f"the {type(model_id).__name__} passed as the base")
        return config.model_type
    model_id = resolve_model(str(model_id))
    check_base_folder(model_id)
    return checkpoint_family(model_id).model_type


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and load report off for a moment (errors still raise)."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity(transformers_logging.CRITICAL)
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def check_base_folder(model_id: str) -> None:
    """Refuse, before transformers tries, what cannot be a base: an adapter folder, a folder without
    config.json or weights, a file, or a hub id while the hub is unreachable.

    Raises:
        ConfigError: naming the path and what it holds instead.
    """
    path = Path(model_id)
    # os.path, not Path methods: they return False (no OSError) for names the OS refuses, e.g. too long.
    if os.path.isfile(model_id):
        raise ConfigError(f"--model {model_id} is a file; pass the folder that holds config.json and the weights")
    if not os.path.isdir(model_id):
        if model_id.startswith((".", "/", "~")) or not hub_reachable():
            raise ConfigError(
                f"--model {model_id!r} is not a local directory and the Hugging Face hub is not reachable; without "
                "network access pass a local checkpoint directory, e.g. --model /path/to/roberta-base"
            )
        return
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"--model {model_id} is an adapter folder, not a base model; pass it as --adapter (or "
                          "--init-from) and its base as --model")
    if not (path / "config.json").is_file():
        held = sorted(p.name for p in path.iterdir())[:6]
        raise ConfigError(f"--model {model_id} has no config.json (it holds {held or 'nothing'}); pass a "
                          "checkpoint folder written by save_pretrained")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ConfigError(f"--model {model_id} has config.json but no weights (model.safetensors); "
                          "copy the weights file next to it")
