"""Deprecated alias of the flat 0.1 layout, kept because README.md documented
`roberta_lora.merge_export.load_merged`. The code lives in `roberta_lora.adapters.merge`
(`export_merged`, `load_merged`) and `roberta_lora.model.standalone` (`MergedLightClassifier`).
Importing this module warns."""

import warnings

from roberta_lora.adapters.merge import export_merged, load_merged, read_merge_info
from roberta_lora.model.standalone import MergedLightClassifier

warnings.warn("roberta_lora.merge_export is deprecated: use roberta_lora.adapters.merge", DeprecationWarning,
              stacklevel=2)

__all__ = ["MergedLightClassifier", "export_merged", "load_merged", "read_merge_info"]
