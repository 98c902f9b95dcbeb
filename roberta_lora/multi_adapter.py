"""Deprecated alias of the flat 0.1 layout, kept because README.md documented this import path.

`MultiAdapterPredictor` now lives in `roberta_lora.adapters.mixed` (also `from roberta_lora import
MultiAdapterPredictor`) and named adapters in `roberta_lora.AdapterBank`. Importing this module warns.
"""

import warnings

from roberta_lora.adapters.mixed import MultiAdapterPredictor

warnings.warn("roberta_lora.multi_adapter is deprecated: use `from roberta_lora import MultiAdapterPredictor` "
              "(named adapters: roberta_lora.AdapterBank)", DeprecationWarning, stacklevel=2)

__all__ = ["MultiAdapterPredictor"]
