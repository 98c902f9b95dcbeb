"""The tokenizer of a base model, loaded for training, evaluation and prediction alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roberta_lora.errors import ConfigError
from roberta_lora.hub import hub_reachable


def load_tokenizer(model_id: str) -> Any:
    """`AutoTokenizer.from_pretrained(model_id)`, with a clear error offline or for a folder without one."""
    from transformers import (
        AutoTokenizer,  # transformers takes seconds to import; only when a tokenizer is needed
    )

    if not Path(model_id).is_dir() and not hub_reachable():
        raise ConfigError(
            f"--model {model_id!r} is not a local directory and the Hugging Face hub is not reachable (offline?). "
            "Pass local paths: --model /path/to/roberta-base (config, weights and tokenizer files) and "
            "--data-dir /path/to/data (e.g. ../shared/data/glue)"
        )
    try:
        return AutoTokenizer.from_pretrained(model_id)
    except OSError as error:
        raise ConfigError(
            f"could not load a tokenizer from {model_id!r} ({str(error).splitlines()[0]}). Without network access "
            "pass a local checkpoint directory with --model (it must hold the tokenizer files too)"
        ) from None
