"""The encoder families the toolkit supports, and their transformers classes: one table, `FAMILIES`.

A family is a transformers `config.model_type`. Module paths inside the encoder (where LoRA goes)
are in `lora.targets.LAYOUTS`; this table holds what the model layer needs:

| model_type | encoder | GLUE "roberta" head maps onto | SQuAD | token_type_ids |
|---|---|---|---|---|
| roberta (roberta-base/-large, distilroberta, CodeBERT, ...) | `RobertaModel` | `RobertaForSequenceClassification` (classifier.dense, classifier.out_proj) | `RobertaForQuestionAnswering` | ignored |
| xlm-roberta | `XLMRobertaModel` | `XLMRobertaForSequenceClassification` (same names) | `XLMRobertaForQuestionAnswering` | ignored |
| camembert | `CamembertModel` | `CamembertForSequenceClassification` (same names) | `CamembertForQuestionAnswering` | ignored |
| bert | `BertModel` | `BertForSequenceClassification` (bert.pooler.dense, classifier) | `BertForQuestionAnswering` | used |
| distilbert | `DistilBertModel` | none (its head is pre_classifier -> ReLU -> classifier) | `DistilBertForQuestionAnswering` | ignored |

The encoder is always used without a pooler. transformers' "roberta" head (dense -> tanh ->
out_proj on the first token) is BERT's pooler plus its classifier, so a BERT adapter with that head
becomes a `BertForSequenceClassification` whose pooler holds the head's dense layer, and a new head of
that kind on a BERT checkpoint starts from the checkpoint's pooler (read once, then dropped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    CamembertForQuestionAnswering,
    CamembertForSequenceClassification,
    CamembertModel,
    DistilBertForQuestionAnswering,
    DistilBertModel,
    PretrainedConfig,
    PreTrainedModel,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from roberta_lora.errors import ConfigError, first_line
from roberta_lora.lora.targets import MODEL_TYPES, check_model_type

_ROBERTA_CLASSIFIER = {"dense": "classifier.dense", "out_proj": "classifier.out_proj"}


@dataclass(frozen=True)
class Family:
    """One encoder family's transformers classes.

    encoder: the bare encoder class the base is loaded with.
    question_answering: the span-head class SQuAD adapters merge into (its head is `qa_outputs`).
    sequence_classification: the class GLUE adapters with the "roberta" head merge into, or None
        when no transformers class computes that head.
    classifier_paths: where that head's two linears ("dense", "out_proj") live in `sequence_classification`.
    has_pooler: the encoder class takes `add_pooling_layer` (always loaded with False).
    uses_token_types: the encoder reads `token_type_ids` (segment embeddings), so the model passes them.
    layer_norms: the names of its LayerNorm modules (PEFT's `modules_to_save` matches module names).
    """

    encoder: type[PreTrainedModel]
    question_answering: type[PreTrainedModel]
    sequence_classification: type[PreTrainedModel] | None
    classifier_paths: Mapping[str, str] = field(default_factory=lambda: dict(_ROBERTA_CLASSIFIER))
    has_pooler: bool = True
    uses_token_types: bool = False
    layer_norms: tuple[str, ...] = ("LayerNorm",)

    @property
    def model_type(self) -> str:
        return self.encoder.config_class.model_type

    @property
    def no_pooler(self) -> dict[str, Any]:
        """What the encoder's constructor and `from_pretrained` need to leave the pooler out."""
        return {"add_pooling_layer": False} if self.has_pooler else {}

    @property
    def head_dense_is_pooler(self) -> bool:
        """The "roberta" head's dense layer is the encoder's pooler in transformers' classifier (BERT), so a new
        head starts from the pretrained pooler, as `BertForSequenceClassification` does."""
        return self.classifier_paths.get("dense", "") == f"{self.prefix}.pooler.dense"

    @property
    def prefix(self) -> str:
        """The encoder's attribute in transformers' task classes ("roberta", "bert", "distilbert")."""
        return self.encoder.base_model_prefix


FAMILIES: dict[str, Family] = {
    "roberta": Family(RobertaModel, RobertaForQuestionAnswering, RobertaForSequenceClassification),
    "xlm-roberta": Family(XLMRobertaModel, XLMRobertaForQuestionAnswering, XLMRobertaForSequenceClassification),
    "camembert": Family(CamembertModel, CamembertForQuestionAnswering, CamembertForSequenceClassification),
    "bert": Family(BertModel, BertForQuestionAnswering, BertForSequenceClassification,
                   classifier_paths={"dense": "bert.pooler.dense", "out_proj": "classifier"}, uses_token_types=True),
    "distilbert": Family(DistilBertModel, DistilBertForQuestionAnswering, None, classifier_paths={}, has_pooler=False,
                         layer_norms=("LayerNorm", "sa_layer_norm", "output_layer_norm")),
}
assert tuple(FAMILIES) == MODEL_TYPES, "lora.targets.LAYOUTS and FAMILIES name the same families"


def family_of(config: PretrainedConfig | str, source: str = "the base model") -> Family:
    """The family of a transformers config (or a model_type string); ConfigError listing the supported ones."""
    model_type = config if isinstance(config, str) or config is None else getattr(config, "model_type", None)
    return FAMILIES[check_model_type(model_type, source)]


def build_encoder(config: PretrainedConfig) -> PreTrainedModel:
    """A new encoder (random weights, no pooler) of `config`'s family."""
    family = family_of(config)
    return family.encoder(config, **family.no_pooler)


def intermediate_size(config: PretrainedConfig) -> int:
    """The feed-forward width (DistilBERT calls it hidden_dim)."""
    return config.hidden_dim if config.model_type == "distilbert" else config.intermediate_size


def checkpoint_model_type(model_id: str | Path) -> str | None:
    """`model_type` from a checkpoint's config.json (a local folder or a hub id), without loading weights;
    None when config.json names none. Raises ConfigError when config.json cannot be read."""
    try:
        data, _ = PretrainedConfig.get_config_dict(str(model_id))
    except (OSError, ValueError) as error:
        where = "the directory is incomplete" if os.path.isdir(str(model_id)) else "it is not a local directory"
        raise ConfigError(f"could not read the config.json of {str(model_id)!r} ({where}; "
                          f"{first_line(error)})") from None
    return data.get("model_type")


def checkpoint_family(model_id: str | Path) -> Family:
    """The family of a checkpoint (see `checkpoint_model_type`); ConfigError listing the supported ones."""
    return family_of(checkpoint_model_type(model_id), f"--model {model_id}")  # type: ignore[arg-type]
