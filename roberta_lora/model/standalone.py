"""Standalone models: an adapter folded into a copy of its base, as transformers' own classes.

| adapter | standalone model |
|---|---|
| SQuAD v1/v2 | `RobertaForQuestionAnswering` |
| GLUE, "roberta" head | `RobertaForSequenceClassification` |
| GLUE, light head | `MergedLightClassifier` (an encoder plus the light head; transformers has no such head) |

`LoraWrapperRoberta.merge_and_unload()` and `unload()` build these from the model's state;
`adapters.merge` writes them to folders.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from roberta_lora.model.config import AdapterConfig, head_attribute
from roberta_lora.model.heads import LightClassificationHead

LIGHT_HEAD_NAME = "light_head.safetensors"
KINDS = ("question_answering", "sequence_classification", "light_head")


class MergedLightClassifier(nn.Module):
    """A plain RoBERTa encoder (LoRA merged in) with the toolkit's light head: the standalone form of
    a GLUE adapter with `head="light"`, which has no transformers counterpart."""

    def __init__(self, config: RobertaConfig, num_classes: int, head_dropout: float = 0.1,
                 label_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = config
        self.label_names = list(label_names)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = LightClassificationHead(config.hidden_size, num_classes, head_dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return SequenceClassifierOutput(logits=self.classifier(hidden))  # (B, C)

    def save_pretrained(self, directory: str | Path) -> None:
        """The encoder as a transformers checkpoint, the head as light_head.safetensors."""
        self.roberta.save_pretrained(directory)
        state = {n: t.detach().to("cpu").contiguous() for n, t in self.classifier.state_dict().items()}
        save_file(state, Path(directory) / LIGHT_HEAD_NAME, metadata={"format": "pt", "producer": "roberta-lora"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, head_dropout: float = 0.1,
                        label_names: Sequence[str] = ()) -> MergedLightClassifier:
        """Load what `save_pretrained` wrote (the number of classes comes from the head's tensors)."""
        directory = Path(directory)
        head = load_file(directory / LIGHT_HEAD_NAME)
        encoder = RobertaModel.from_pretrained(directory, add_pooling_layer=False)
        model = cls(encoder.config, head["out_proj.weight"].size(0), head_dropout, label_names)
        model.roberta = encoder
        model.classifier.load_state_dict(head, strict=True)
        return model.eval()


def merged_kind(config: AdapterConfig) -> str:
    """Which standalone class an adapter becomes (one of KINDS)."""
    if config.task_type != "glue":
        return "question_answering"
    return "sequence_classification" if config.head == "roberta" else "light_head"


def standalone_model(config: AdapterConfig, encoder_config: RobertaConfig, encoder_state: dict[str, torch.Tensor],
                     head_state: dict[str, torch.Tensor]) -> nn.Module:
    """The standalone model for `config` holding exactly these tensors (see the module docstring).

    Args:
        encoder_state: a plain `RobertaModel` state dict (the adapter already folded in).
        head_state: the head's state dict, named inside the head ("out_proj.weight", "weight", ...).
    """
    encoder_config = copy.deepcopy(encoder_config)
    kind = merged_kind(config)
    prefix = head_attribute(config.task_type)
    if kind == "question_answering":
        encoder_config.num_labels = 2
        encoder_config.architectures = ["RobertaForQuestionAnswering"]
        shell: nn.Module = RobertaForQuestionAnswering(encoder_config)
    elif kind == "sequence_classification":
        encoder_config.num_labels = config.num_classes
        encoder_config.id2label = dict(enumerate(config.label_names)) or encoder_config.id2label
        encoder_config.label2id = {name: i for i, name in encoder_config.id2label.items()}
        encoder_config.problem_type = "regression" if config.num_classes == 1 else "single_label_classification"
        encoder_config.classifier_dropout = config.head_dropout
        encoder_config.architectures = ["RobertaForSequenceClassification"]
        shell = RobertaForSequenceClassification(encoder_config)
    else:
        shell = MergedLightClassifier(encoder_config, config.num_classes, config.head_dropout, config.label_names)
    state = {**{f"roberta.{n}": t for n, t in encoder_state.items()}, **{f"{prefix}.{n}": t for n, t in head_state.items()}}
    return assemble(shell, state)


def plain_encoder(encoder_config: RobertaConfig, encoder_state: dict[str, torch.Tensor]) -> RobertaModel:
    """A new `RobertaModel` holding `encoder_state`."""
    return assemble(RobertaModel(copy.deepcopy(encoder_config), add_pooling_layer=False), encoder_state)


def assemble(shell: nn.Module, state: dict[str, Any]) -> Any:
    # assign=True keeps our tensors' dtype and device; strict=True catches any name we got wrong.
    shell.load_state_dict(state, strict=True, assign=True)
    return shell
