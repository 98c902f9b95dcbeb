"""Task heads on top of the encoder's hidden states (B, T, H).

- "light" (default for GLUE): LayerNorm -> dropout -> Linear on the `<s>` token. This is the
  tutorial's head; it adds only 2H + (H+1)C parameters, which keeps adapters near 1.7 MB.
- "roberta": transformers' own `RobertaClassificationHead` (dense + tanh + out_proj), the
  LoRA paper's set-up; it adds H*H parameters (~2.4 MB more for roberta-base). It needs only
  the hidden size, so every family can have it (for BERT it is the pooler plus the classifier).
- SQuAD: one Linear(H, 2) giving start and end logits per token, named `qa_outputs` like
  transformers' `...ForQuestionAnswering` classes, so v1 and v2 share it (v2's "no answer" is
  the span (0, 0), the first token).

Sizes come from the encoder's config of any family: `hidden_size` (DistilBERT's `dim`, which its
config also answers as hidden_size) and `initializer_range` for the initial draw.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead

from roberta_lora.choices import HEAD_KINDS
from roberta_lora.errors import ConfigError
from roberta_lora.model.config import AdapterConfig


class LightClassificationHead(nn.Module):
    """LayerNorm -> dropout -> Linear over the first token's hidden state."""

    def __init__(self, hidden_size: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_classes)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first_token = hidden_states[:, 0, :]  # (B, H): the <s> / [CLS] token
        return self.out_proj(self.dropout(self.norm(first_token)))  # (B, C)


def classification_head_module(kind: str, hidden_size: int, num_classes: int, dropout: float) -> nn.Module:
    """A GLUE head of the given kind, as constructed (default initialisation)."""
    if kind == "light":
        return LightClassificationHead(hidden_size, num_classes, dropout)
    if kind == "roberta":
        # The head reads only these three (the families' configs name their other fields differently).
        return RobertaClassificationHead(RobertaConfig(hidden_size=hidden_size, num_labels=num_classes,
                                                       classifier_dropout=dropout))
    raise ConfigError(f"unknown head kind {kind!r}; expected one of {list(HEAD_KINDS)} (e.g. --head light)")


def build_classification_head(
    kind: str, config: PretrainedConfig, num_classes: int, dropout: float, generator: torch.Generator | None = None
) -> nn.Module:
    """A GLUE head of the given kind for an encoder of `config`'s size (any family), initialised like
    transformers' heads (normal(0, initializer_range), zero bias)."""
    head = classification_head_module(kind, config.hidden_size, num_classes, dropout)
    _init_linear_layers(head, config.initializer_range, generator)
    return head


def build_question_answering_head(config: PretrainedConfig, generator: torch.Generator | None = None) -> nn.Linear:
    """Linear(H, 2): per-token start and end logits."""
    head = nn.Linear(config.hidden_size, 2)
    _init_linear_layers(head, config.initializer_range, generator)
    return head


def _init_linear_layers(module: nn.Module, std: float, generator: torch.Generator | None) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=std, generator=generator)
            nn.init.zeros_(layer.bias)


def build_head(config: AdapterConfig, encoder_config: PretrainedConfig, generator: torch.Generator | None = None) -> nn.Module:
    """The head an adapter config asks for: a GLUE head of its kind, or the SQuAD span head."""
    if config.task_type == "glue":
        return build_classification_head(config.head, encoder_config, config.num_classes, config.head_dropout, generator)
    return build_question_answering_head(encoder_config, generator)


@torch.no_grad()
def start_from_pooler(head: nn.Module, pooler: nn.Module) -> None:
    """Copy a pretrained pooler's dense layer into a "roberta" head's dense layer (BERT's classifier is the
    pooler, dense -> tanh, then a new linear layer: `BertForSequenceClassification` starts the same way)."""
    source = pooler.dense
    if source.weight.shape != head.dense.weight.shape:
        raise ConfigError(f"the base's pooler is {tuple(source.weight.shape)} but the head's dense layer is "
                          f"{tuple(head.dense.weight.shape)}; is the checkpoint's config.json from another model?")
    head.dense.weight.copy_(source.weight)
    head.dense.bias.copy_(source.bias)


def set_dropout(module: nn.Module, p: float) -> None:
    """Set the probability of every nn.Dropout below `module` (a head's dropout follows its config)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = p
