"""roberta-lora: LoRA adapters for RoBERTa on GLUE and SQuAD.

The package face is lazy (PEP 562): `import roberta_lora` loads no torch; the names below load
their module on first use, so `roberta-lora --help` starts at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from roberta_lora._version import __version__
from roberta_lora.errors import AdapterError, ConfigError, DataError, RobertaLoraError

# Public name -> the module that defines it.
_LAZY = {
    "LoraLinear": "roberta_lora.lora.layer",
    "LoraRobertaSelfAttention": "roberta_lora.lora.attention",
    "LoraWrapperRoberta": "roberta_lora.model.wrapper",
    "AdapterConfig": "roberta_lora.model.config",
    "AdapterBank": "roberta_lora.adapters.bank",
    "BatchedAdapters": "roberta_lora.adapters.batched",
    "MultiAdapterPredictor": "roberta_lora.adapters.mixed",
    "Predictor": "roberta_lora.evaluation.predict",
    "evaluate_adapter": "roberta_lora.evaluation.evaluate",
    "TrainConfig": "roberta_lora.training.config",
    "train": "roberta_lora.training.loop",
    "make_toy_roberta": "roberta_lora.model.toy",
    "make_toy_encoder": "roberta_lora.model.toy",
}

__all__ = [
    "AdapterBank", "AdapterConfig", "AdapterError", "BatchedAdapters", "ConfigError", "DataError", "LoraLinear", "LoraRobertaSelfAttention",
    "LoraWrapperRoberta", "MultiAdapterPredictor", "Predictor", "RobertaLoraError", "TrainConfig", "__version__",
    "evaluate_adapter", "make_toy_encoder", "make_toy_roberta", "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from roberta_lora.adapters.bank import AdapterBank
    from roberta_lora.adapters.batched import BatchedAdapters
    from roberta_lora.adapters.mixed import MultiAdapterPredictor
    from roberta_lora.evaluation.evaluate import evaluate_adapter
    from roberta_lora.evaluation.predict import Predictor
    from roberta_lora.lora.attention import LoraRobertaSelfAttention
    from roberta_lora.lora.layer import LoraLinear
    from roberta_lora.model.config import AdapterConfig
    from roberta_lora.model.toy import make_toy_encoder, make_toy_roberta
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.training.config import TrainConfig
    from roberta_lora.training.loop import train


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'roberta_lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
