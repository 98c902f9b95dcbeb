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

from roberta_lora.injection import LoraRobertaSelfAttention  # noqa: E402
from roberta_lora.lora import LoraLinear  # noqa: E402
from roberta_lora.model import LoraWrapperRoberta  # noqa: E402

__all__ += ["LoraLinear", "LoraRobertaSelfAttention", "LoraWrapperRoberta"]
