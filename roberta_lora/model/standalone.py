"""Standalone models: an adapter folded into a copy of its base, as transformers' own classes.

| adapter | standalone model |
|---|---|
| SQuAD v1/v2 | the family's `...ForQuestionAnswering` (`RobertaForQuestionAnswering`, `BertForQuestionAnswering`, ...) |
| GLUE, "roberta" head | the family's `...ForSequenceClassification` (for BERT the head's dense layer is its pooler) |
| GLUE, "roberta" head on DistilBERT | `MergedClassifier` (DistilBERT's own classifier is ReLU, not tanh) |
| GLUE, light head | `MergedClassifier` (an encoder plus the light head; transformers has no such head) |

The family table (`model.families.FAMILIES`) says which classes those are. `LoraWrapperRoberta.merge_and_unload()`
and `unload()` build these from the model's state; `adapters.merge` writes them to folders.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from roberta_lora.errors import AdapterError
from roberta_lora.fileio import atomic_write_bytes, sorted_safetensors_metadata
from roberta_lora.model.base import load_base_encoder
from roberta_lora.model.config import AdapterConfig, head_attribute
from roberta_lora.model.families import Family, build_encoder, family_of
from roberta_lora.model.heads import classification_head_module

# The head's file next to a `MergedClassifier`'s encoder checkpoint, by head kind.
HEAD_FILES = {"light": "light_head.safetensors", "roberta": "roberta_head.safetensors"}
LIGHT_HEAD_NAME = HEAD_FILES["light"]
KINDS = ("question_answering", "sequence_classification", "light_head", "roberta_head")


class MergedClassifier(nn.Module):
    """A plain encoder of any family (LoRA merged in) with the toolkit's own classification head: the
    standalone form of a GLUE adapter whose head has no transformers counterpart (the light head, or the
    "roberta" head on DistilBERT). The encoder is `self.roberta` whatever its family, as in the wrapper."""

    def __init__(self, config: PretrainedConfig, num_classes: int, head_dropout: float = 0.1,
                 label_names: Sequence[str] = (), head: str = "light") -> None:
        super().__init__()
        self.config = config
        self.label_names = list(label_names)
        self.head_kind = head
        self.roberta = build_encoder(config)
        self.classifier = classification_head_module(head, config.hidden_size, num_classes, head_dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        segments = {"token_type_ids": token_type_ids} if family_of(self.config).uses_token_types else {}
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state  # (B, T, H)
        return SequenceClassifierOutput(logits=self.classifier(hidden))  # (B, C)

    def save_pretrained(self, directory: str | Path) -> None:
        """The encoder as a transformers checkpoint, the head as light_head.safetensors / roberta_head.safetensors."""
        self.roberta.save_pretrained(directory)
        state = {n: t.detach().to("cpu").contiguous() for n, t in self.classifier.state_dict().items()}
        payload = save_safetensors_bytes(state, metadata={"format": "pt", "producer": "roberta-lora"})
        atomic_write_bytes(Path(directory) / HEAD_FILES[self.head_kind], sorted_safetensors_metadata(payload))

    @classmethod
    def from_pretrained(cls, directory: str | Path, head_dropout: float = 0.1,
                        label_names: Sequence[str] = ()) -> MergedClassifier:
        """Load what `save_pretrained` wrote (the head kind comes from its file, the number of classes
        from its tensors, the family from config.json)."""
        directory = Path(directory)
        kinds = [kind for kind, name in HEAD_FILES.items() if (directory / name).is_file()]
        if len(kinds) != 1:
            raise AdapterError(f"{directory} should hold exactly one head file of {list(HEAD_FILES.values())}, "
                               f"found {[HEAD_FILES[k] for k in kinds]}; export it again with `roberta-lora merge`")
        head = load_file(directory / HEAD_FILES[kinds[0]])
        encoder = load_base_encoder(directory)
        model = cls(encoder.config, head["out_proj.weight"].size(0), head_dropout, label_names, head=kinds[0])
        model.roberta = encoder
        model.classifier.load_state_dict(head, strict=True)
        return model.eval()


MergedLightClassifier = MergedClassifier  # its name before it held any head kind


def merged_kind(config: AdapterConfig, model_type: str = "roberta") -> str:
    """Which standalone class an adapter on a base of `model_type` becomes (one of KINDS)."""
    if config.task_type != "glue":
        return "question_answering"
    if config.head == "roberta" and family_of(model_type).sequence_classification is not None:
        return "sequence_classification"
    return f"{config.head}_head"


def standalone_model(config: AdapterConfig, encoder_config: PretrainedConfig, encoder_state: dict[str, torch.Tensor],
                     head_state: dict[str, torch.Tensor]) -> nn.Module:
    """The standalone model for `config` holding exactly these tensors (see the module docstring).

    Args:
        encoder_state: a plain encoder state dict (the adapter already folded in).
        head_state: the head's state dict, named inside the head ("out_proj.weight", "weight", ...).
    """
    encoder_config = copy.deepcopy(encoder_config)
    family = family_of(encoder_config)
    kind = merged_kind(config, encoder_config.model_type)
    if kind == "question_answering":
        encoder_config.num_labels = 2
        shell: nn.Module = _transformers_shell(family.question_answering, encoder_config)
        head = {f"{head_attribute(config.task_type)}.{n}": t for n, t in head_state.items()}
    elif kind == "sequence_classification":
        assert family.sequence_classification is not None  # merged_kind checked it
        encoder_config.num_labels = config.num_classes
        encoder_config.id2label = dict(enumerate(config.label_names)) or encoder_config.id2label
        encoder_config.label2id = {name: i for i, name in encoder_config.id2label.items()}
        encoder_config.problem_type = "regression" if config.num_classes == 1 else "single_label_classification"
        encoder_config.classifier_dropout = config.head_dropout
        shell = _transformers_shell(family.sequence_classification, encoder_config)
        head = classifier_names(family, head_state)
    else:
        shell = MergedClassifier(encoder_config, config.num_classes, config.head_dropout, config.label_names, config.head)
        head = {f"classifier.{n}": t for n, t in head_state.items()}
    prefix = family.prefix if isinstance(shell, PreTrainedModel) else "roberta"
    return assemble(shell, {**{f"{prefix}.{n}": t for n, t in encoder_state.items()}, **head})


def classifier_names(family: Family, head_state: dict[str, Any]) -> dict[str, Any]:
    """The "roberta" head's tensors ("dense.weight", "out_proj.bias", ...) under their names in the family's
    `...ForSequenceClassification` ("classifier.dense.weight"; BERT: "bert.pooler.dense.weight", "classifier.bias")."""
    renamed = {}
    for name, tensor in head_state.items():
        module, _, parameter = name.partition(".")
        renamed[f"{family.classifier_paths[module]}.{parameter}"] = tensor
    return renamed


def _transformers_shell(cls: type[PreTrainedModel], config: PretrainedConfig) -> PreTrainedModel:
    config.architectures = [cls.__name__]
    return cls(config)


def plain_encoder(encoder_config: PretrainedConfig, encoder_state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A new encoder of the config's family (no pooler) holding `encoder_state`."""
    return assemble(build_encoder(copy.deepcopy(encoder_config)), encoder_state)


def assemble(shell: nn.Module, state: dict[str, Any]) -> Any:
    # assign=True keeps our tensors' dtype and device; strict=True catches any name we got wrong.
    shell.load_state_dict(state, strict=True, assign=True)
    return shell
