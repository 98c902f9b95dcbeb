"""Sharing adapters on the Hugging Face hub: the model card and `push`. The code lives in
`roberta_lora.model.hub_card` (so that `LoraWrapperRoberta.push_to_hub` can use it); this module keeps
the import path of earlier releases."""

from roberta_lora.model.hub_card import TASK_DATASETS, hub_card, push_adapter

__all__ = ["TASK_DATASETS", "hub_card", "push_adapter"]
