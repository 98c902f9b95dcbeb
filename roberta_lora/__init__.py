"""roberta-lora: LoRA adapters for RoBERTa on GLUE and SQuAD."""

from __future__ import annotations

__version__ = "0.1.0"

from roberta_lora.errors import AdapterError, ConfigError, DataError, RobertaLoraError

__all__ = [
    "AdapterError",
    "ConfigError",
    "DataError",
    "RobertaLoraError",
    "__version__",
]
