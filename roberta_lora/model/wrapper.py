"""`LoraWrapperRoberta`: a frozen encoder with LoRA, a task head and ONE adapter.

The encoder is any supported RoBERTa- or BERT-family model (`model.families`: RoBERTa, XLM-R,
CamemBERT, BERT, DistilBERT), loaded with its own transformers class and kept at `self.roberta`
whatever its family, so adapter tensor names read "roberta.<encoder path>" in every family; the
adapter records the family (`AdapterConfig.model_type`) and loads only on a base of that family.

The model holds exactly one adapter at a time: its LoRA layers, the base tensors it trains
(biases, LayerNorms, embeddings) and its head live in the model's modules, and
`adapter_config` describes them. Everything about several adapters (a bank of named ones,
switching, mixed batches, combining) is in `roberta_lora.adapters` and works through the public
methods here, chiefly `apply_adapter(config, tensors)`.

The model keeps, on the CPU, the base values of every base tensor an adapter has overwritten
("pristine" values, copied before the first overwrite), so `apply_adapter`, `disable_adapter`
and `unload` can always put the plain base back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from roberta_lora._version import __version__
from roberta_lora.choices import LORA_INIT_RANK_STEP, LORA_INITS, LORA_INITS_FROM_BASE, TASK_TYPES
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.lora.injection import inject_lora, lora_layers, rewrap_lora, strip_lora, unwrap_lora
from roberta_lora.lora.targets import resolve_targets
from roberta_lora.lora.variants import portable_alpha
from roberta_lora.model.adapter_files import (
    base_fingerprint,
    check_tensors,
    is_legacy_fingerprint,
    legacy_base_fingerprint,
    read_adapter_tensors,
    save_adapter_files,
)
from roberta_lora.model.base import BaseSpec, load_base_encoder, take_pooler
from roberta_lora.model.config import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    MAX_LORA_RANK,
    WEIGHTS_NAME,
    AdapterConfig,
    head_attribute,
    read_adapter_config,
)
from roberta_lora.model.families import family_of
from roberta_lora.model.heads import build_head, set_dropout, start_from_pooler
from roberta_lora.model.standalone import plain_encoder, standalone_model
from roberta_lora.model.tensors import (
    adapter_parameters,
    base_name,
    expected_tensors,
    head_spec,
    lora_options,
    lora_spec,
    overwritten_base_names,
)
from roberta_lora.sources import adapter_folder

logger = logging.getLogger(__name__)

# Fields that decide an adapter's tensors: loading into the model's own adapter needs them equal.
_SHAPE_FIELDS = ("method", "task_type", "num_classes", "lora_rank", "lora_alpha", "targets", "head", "train_biases",
                 "train_layer_norms", "train_embeddings", "use_rslora", "use_dora", "layers_to_transform")
# What an embedding lookup takes as indices (token ids, segment ids).
_ID_DTYPES = (torch.int64, torch.int32)
IGNORE_INDEX = -100  # a class label the loss skips (cross_entropy's default, as in transformers)
# What makes a folder a transformers model checkpoint besides config.json: weights, or a tokenizer. An adapter
# saved there turns it into a PEFT-looking folder (adapter_config.json) that transformers no longer loads.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ckpt.index")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                    "special_tokens_map.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model")
_PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class LoraWrapperRoberta(nn.Module):
    """An encoder with LoRA on the chosen projections, a task head, and everything else frozen.

    Args:
        task_type: "glue" (classification, or regression when num_classes == 1), "squad_v1" or "squad_v2".
        num_classes: number of GLUE classes (1 = regression). Ignored for SQuAD (always start/end).
        model_id: hub id ("roberta-base", "bert-base-uncased", ...), local checkpoint dir, a config (random
            weights: RobertaConfig, BertConfig, DistilBertConfig, ...) or a bare encoder (RobertaModel, BertModel, ...).
            Its config.model_type picks the family; an unsupported one is refused (ConfigError).
        lora_rank: r.
        lora_alpha: scale numerator (default: equal to r, i.e. scaling 1 as in the tutorial).
        lora_dropout: dropout on the LoRA branch.
        targets: "query,value" (default), "all-linear" or a list.
        train_biases: every Linear bias of the base also trains (and is saved).
        train_layer_norms: the base's LayerNorms also train (and are saved).
        train_embeddings: the embeddings also train (and are saved).
        head: "light" (LayerNorm, dropout, Linear) or "roberta" (transformers' classification head); GLUE only.
        head_dropout: dropout inside the head.
        label_names: class names in index order (stored in the adapter).
        seed: when given, the LoRA A draw and the head initialisation are reproducible (the global RNG is untouched).
        attn_implementation: "sdpa" or "eager" to override the checkpoint's choice.
        task: the task name to record in the adapter (e.g. "sst2").
        method: "lora" (default), "head" (no LoRA, only the head trains) or "full" (everything trains).
        quantize: None, "4bit" (NF4, bf16 compute) or "8bit": load the frozen base through bitsandbytes
            (needs CUDA); LoRA factors and the head stay in full precision.
        use_rslora: scale by lora_alpha / sqrt(lora_rank) (rsLoRA); PEFT's name and meaning.
        use_dora: DoRA (a trained magnitude per output feature); PEFT's name and meaning.
        init_lora_weights: a name from `choices.LORA_INITS` ("kaiming", the default); see `lora.variants`.
        layers_to_transform: the layer indexes that get LoRA (None: all), as in PEFT.

    Like any new nn.Module the model starts in train mode, and every submodule with it (the encoder
    that `from_pretrained` returns in eval mode included); `from_adapter` returns it in eval mode.
    """

    def __init__(
        self,
        task_type: str = "glue",
        num_classes: int | None = None,
        model_id: BaseSpec = "roberta-base",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.1,
        targets: str | list[str] | tuple[str, ...] | None = None,
        train_biases: bool = True,
        train_embeddings: bool = False,
        train_layer_norms: bool = True,
        head: str = "light",
        head_dropout: float = 0.1,
        label_names: list[str] | None = None,
        seed: int | None = None,
        attn_implementation: str | None = None,
        task: str | None = None,
        method: str = "lora",
        quantize: str | None = None,
        use_rslora: bool = False,
        use_dora: bool = False,
        init_lora_weights: str = "kaiming",
        layers_to_transform: list[int] | None = None,
    ) -> None:
        super().__init__()
        # Every argument is checked before the (slow) base is loaded, all problems in one ConfigError.
        config = _adapter_config_of(
            task_type=task_type, num_classes=num_classes, model_id=model_id, lora_rank=lora_rank,
            lora_alpha=lora_alpha, lora_dropout=lora_dropout, targets=targets, train_biases=train_biases,
            train_embeddings=train_embeddings, train_layer_norms=train_layer_norms, head=head,
            head_dropout=head_dropout, label_names=label_names, seed=seed, attn_implementation=attn_implementation,
            task=task, method=method, quantize=quantize, use_rslora=use_rslora, use_dora=use_dora,
            init_lora_weights=init_lora_weights, layers_to_transform=layers_to_transform,
        )
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

        pooled_head = config.task_type == "glue" and config.head == "roberta"
        self.roberta = load_base_encoder(model_id, attn_implementation, quantize, with_pooler=pooled_head)
        pooler = take_pooler(self.roberta, loaded_here=isinstance(model_id, (str, Path))) if pooled_head else None
        self.config = self.roberta.config
        config.model_type = self.config.model_type  # the family: load_base_encoder accepted it
        # Computed before anything is trained or merged: this is "the base" adapters are checked against.
        config.base_fingerprint = base_fingerprint(self.roberta)
        self._adapter_config = config
        self._disabled = False
        # Base values (on the CPU, by plain encoder name) of the base tensors an adapter overwrites.
        self._pristine: dict[str, torch.Tensor] = {}
        self.replaced_modules: list[str] = []
        if config.method == "lora":
            self.replaced_modules = inject_lora(
                self.roberta, config.targets, config.lora_rank, config.lora_alpha, config.lora_dropout, generator,
                init=config.init_lora_weights, **lora_options(config),
            )
        logger.info("LoRA (r=%d) on %d modules: %s ...", config.lora_rank, len(self.replaced_modules),
                    self.replaced_modules[:2])
        head = build_head(config, self.config, generator)
        if pooler is not None and family_of(self.config).head_dense_is_pooler:
            start_from_pooler(head, pooler)  # as BertForSequenceClassification starts
        setattr(self, head_attribute(config.task_type), head.to(self._device()))
        self.freeze_base()
        self._save_pristine(overwritten_base_names(self.adapter_state_dict()))  # before any training
        self.train(self.training)  # every submodule follows the wrapper (from_pretrained returns eval mode)

    # ----------------------------------------------------------------------------- structure
    @property
    def adapter_config(self) -> AdapterConfig:
        """The adapter's configuration (its task type and head decide what `forward` returns)."""
        return self._adapter_config

    @property
    def task_type(self) -> str:
        return self._adapter_config.task_type

    @property
    def head_module(self) -> nn.Module:
        return getattr(self, head_attribute(self.task_type))

    def _device(self) -> torch.device:
        return next(self.roberta.parameters()).device

    def freeze_base(self) -> None:
        """Train only what the adapter holds: LoRA factors, the head, and the base tensors the config asks for
        (method "head": the head only; "full": everything)."""
        self.requires_grad_(False)
        for parameter in adapter_parameters(self.roberta, self.head_module, self._adapter_config).values():
            parameter.requires_grad = True

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors the adapter's file holds (those `freeze_base` makes trainable), not copied."""
        return {n: p.detach() for n, p in adapter_parameters(self.roberta, self.head_module, self._adapter_config).items()}

    def portable_adapter(self) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
        """(config, tensors) of the adapter as its file holds it: what it adds to the unmodified base. The live
        tensors (`adapter_state_dict`), except after a PiSSA / OLoRA start, whose update s (B A - B0 A0) is saved
        as the rank-2r LoRA `[B, -B0] [A; A0]` with alpha doubled (sqrt(2) x under rsLoRA), as PEFT converts it."""
        tensors = self.adapter_state_dict()
        layers = lora_layers(self.roberta)
        if not any(layer.lora_A_initial is not None for layer in layers.values()):
            return self._adapter_config, tensors
        portable = dict(tensors)
        for path, layer in layers.items():
            weight_a, weight_b = layer.portable_factors()
            portable[f"roberta.{path}.lora_A.weight"], portable[f"roberta.{path}.lora_B.weight"] = weight_a, weight_b
        config = self._adapter_config
        return replace(config, lora_rank=2 * config.lora_rank,
                       lora_alpha=portable_alpha(config.lora_alpha, config.use_rslora)), portable

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Alias of `adapter_state_dict` (the tensors an adapter file holds)."""
        return self.adapter_state_dict()

    def expected_adapter_tensors(self, config: AdapterConfig) -> dict[str, torch.Tensor]:
        """Names and shapes (meta tensors) an adapter with `config` must hold on this base."""
        return expected_tensors(config, self.config)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def trainable_parameters_summary(self) -> str:
        trainable, total = self.parameter_counts()
        return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"

    def print_trainable_parameters(self) -> None:
        """Like PEFT's: trainable vs total parameter counts."""
        print(self.trainable_parameters_summary())

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput | QuestionAnsweringModelOutput:
        """Logits (and the loss when labels / positions are given) for a batch of token ids (B, T).

        `token_type_ids` (B, T), the segment of each token, reach the encoder where the family uses
        segments (BERT); RoBERTa-style families and DistilBERT have none and ignore them. `labels` (B,)
        are class indices 0..num_classes-1 (-100: a row the loss ignores), or targets for regression;
        `start_positions` / `end_positions` (B,) token indices, for SQuAD models.

        Raises:
            ConfigError: for a batch the encoder cannot take (see `_check_batch`), instead of a torch error.
        """
        self._check_batch(input_ids, attention_mask, token_type_ids, labels, start_positions, end_positions)
        if self.training and torch.is_grad_enabled() and self.merged:
            raise ConfigError(
                "this model's LoRA is merged into the base weights (merge_adapter()), so training it would give "
                "LoRA no gradient; call model.unmerge_adapter() before training, or model.eval() for inference"
            )
        segments = {"token_type_ids": token_type_ids} if family_of(self.config).uses_token_types else {}
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state  # (B, T, H)
        if self.task_type == "glue":
            logits = self.head_module(hidden)  # (B, C)
            loss = None if labels is None else self._classification_loss(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)
        start_logits, end_logits = self.head_module(hidden).unbind(dim=-1)  # each (B, T)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions past the sequence (truncated answers) are ignored, as in transformers.
            ignored = start_logits.size(1)
            start = start_positions.clamp(0, ignored)
            end = end_positions.clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=ignored)
                + F.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)

    def _check_batch(self, input_ids: Any, attention_mask: Any, token_type_ids: Any, labels: Any,
                     start_positions: Any, end_positions: Any) -> None:
        """Refuse a batch the encoder cannot take, before it fails deep inside torch.

        Dtypes and shapes cost nothing (no GPU sync). The values (token ids within the vocabulary,
        class labels within 0..num_classes-1) are checked with two small reductions and ONE
        device-to-host copy: on CUDA an out-of-range index is a device-side assert that leaves the
        process unusable. That value check is left out while torch.compile traces the model (a
        data-dependent branch would break its graph); shapes and dtypes are checked there too.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in _ID_DTYPES:
            raise ConfigError(
                f"input_ids must be a 2-D integer tensor of token ids (batch, tokens), int64 or int32, got "
                f"{_describe(input_ids)}; pass the tokenizer's output (return_tensors='pt'), or convert with .long()"
            )
        shape = tuple(input_ids.shape)
        batch, length = shape
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != shape):
                raise ConfigError(f"{name} must be a tensor of the shape of input_ids {shape}, got {_describe(value)}; "
                                  f"pass the tokenizer's {name} of the same batch")
        if (token_type_ids is not None and token_type_ids.dtype not in _ID_DTYPES
                and family_of(self.config).uses_token_types):
            raise ConfigError(f"token_type_ids must be int64 or int32 segment ids, got {_describe(token_type_ids)}; "
                              "convert with .long()")
        limit = self._max_tokens()
        if batch == 0 or length == 0:
            raise ConfigError(f"input_ids has shape {shape}: an empty batch (expected at least one row of at least "
                              "one token; a tokenized text holds the tokenizer's special tokens at least)")
        if limit is not None and length > limit:
            raise ConfigError(
                f"input_ids has {length} tokens per row, more than the {limit} this {self.config.model_type} model's "
                f"position table holds; truncate to {limit} (tokenizer(..., truncation=True, max_length={limit}))"
            )
        classes = self._check_targets(batch, labels, start_positions, end_positions)
        if not torch.compiler.is_compiling():
            self._check_values(input_ids, labels if labels is not None and classes > 1 and labels.numel() else None,
                               classes)

    def _check_targets(self, batch: int, labels: Any, start_positions: Any, end_positions: Any) -> int:
        """Check the dtypes and shapes of the loss targets; returns the number of classes (0: a span model)."""
        kind = self.task_type
        if kind == "glue":
            if start_positions is not None or end_positions is not None:
                raise ConfigError("start_positions / end_positions are the targets of a SQuAD (span) model; this "
                                  "model is a classifier (task_type 'glue'): pass labels")
            classes = self._adapter_config.num_classes
            if labels is not None and not isinstance(labels, torch.Tensor):
                raise ConfigError(f"labels must be a tensor, got {_describe(labels)}; e.g. torch.tensor([0, 1])")
            if labels is not None and classes > 1 and (tuple(labels.shape) != (batch,) or not _is_integer(labels)):
                raise ConfigError(
                    f"labels must be class indices, an integer tensor of shape ({batch},) (one per row of input_ids), "
                    f"got {_describe(labels)}; e.g. torch.tensor([0, 1]) (floats: .long() if they are whole numbers)"
                )
            return classes
        if labels is not None:
            raise ConfigError(f"labels are the targets of a classifier; this model is a span model (task_type "
                              f"{kind!r}): pass start_positions and end_positions")
        if (start_positions is None) != (end_positions is None):
            raise ConfigError("pass start_positions and end_positions together (both or neither): the span loss "
                              "needs both")
        for name, value in (("start_positions", start_positions), ("end_positions", end_positions)):
            if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,)
                                      or not _is_integer(value)):
                raise ConfigError(f"{name} must be an integer tensor of shape ({batch},) (one token index per row), "
                                  f"got {_describe(value)}")
        return 0

    def _check_values(self, input_ids: torch.Tensor, labels: torch.Tensor | None, classes: int) -> None:
        """Token ids within the vocabulary and labels within 0..classes-1 (or IGNORE_INDEX): one sync."""
        parts = [*torch.aminmax(input_ids)] + ([*torch.aminmax(labels)] if labels is not None else [])
        values = torch.stack(parts).tolist()  # the one device-to-host copy
        vocabulary = self.roberta.get_input_embeddings().num_embeddings
        if values[0] < 0 or values[1] >= vocabulary:
            raise ConfigError(
                f"input_ids holds token id {values[0] if values[0] < 0 else values[1]}, outside this model's vocabulary "
                f"(ids 0..{vocabulary - 1}); the ids come from another tokenizer: use the base's own "
                f"({self._adapter_config.base_model or 'the tokenizer saved with the base model'})"
            )
        if labels is None:
            return
        low, high = values[2], values[3]
        if low == IGNORE_INDEX:  # rare: ignored rows; any other negative label is still wrong
            low = min((int(v) for v in labels[(labels < 0) & (labels != IGNORE_INDEX)].tolist()), default=0)
        if low < 0 or high >= classes:
            names = f" ({', '.join(self._adapter_config.label_names)})" if self._adapter_config.label_names else ""
            raise ConfigError(
                f"labels holds class {low if low < 0 else high}, but this model has {classes} classes{names}: "
                f"expected 0..{classes - 1} ({IGNORE_INDEX} marks a row the loss ignores); map the labels to "
                "those indices, or build the model with the num_classes the data has"
            )

    def _max_tokens(self) -> int | None:
        """Tokens per row the position table holds: its size, less RoBERTa's padding offset (positions start
        after padding_idx, so roberta-base's 514 hold 512); None for an encoder without such a table."""
        embeddings = getattr(self.roberta, "embeddings", None)
        table = getattr(embeddings, "position_embeddings", None)
        if not isinstance(table, nn.Embedding):
            return None
        padding = getattr(embeddings, "padding_idx", None)
        return table.num_embeddings - (padding + 1 if isinstance(padding, int) else 0)

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._adapter_config.num_classes == 1:
            predictions = logits.squeeze(-1) if labels.dim() == 1 else logits
            if predictions.shape != labels.shape:
                # Broadcasting (B, 1) against (B,) would silently compute a (B, B) loss.
                raise ConfigError(f"regression labels have shape {tuple(labels.shape)}, logits {tuple(logits.shape)}")
            return F.mse_loss(predictions, labels.to(predictions.dtype))
        return F.cross_entropy(logits, labels.long())

    # ----------------------------------------------------------------------------- merge
    def merge_adapter(self) -> None:
        """Fold the LoRA updates into the base weights (idempotent): inference then costs what the base
        costs. Biases, LayerNorms and the head are already in place. Training a merged model is refused."""
        for layer in lora_layers(self.roberta).values():
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Restore the base weights exactly (idempotent)."""
        for layer in lora_layers(self.roberta).values():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in lora_layers(self.roberta).values())

    @torch.no_grad()
    def merged_encoder_state_dict(self, plain_base: bool = False) -> dict[str, torch.Tensor]:
        """The encoder's tensors as a plain encoder state dict (`RobertaModel`, `BertModel`, ... of the base's
        family; copies, the model is left as it was).

        By default the adapter is folded in: W + delta for every LoRA layer (computed by
        `LoraLinear.delta_weight`, exactly as `merge()` does), the adapter's biases / LayerNorms /
        embeddings. `plain_base=True`: the base as loaded instead.
        """
        self._require_enabled("export the model")
        self._require_full_precision("merge or unload")
        was_merged = self.merged
        self.unmerge_adapter()
        try:
            state = {}
            for key, tensor in self.roberta.state_dict().items():
                plain = base_name(f"roberta.{key}")
                if plain is not None:
                    state[plain] = tensor.detach().clone()
            if plain_base:
                state.update({n: t.to(state[n].device, copy=True) for n, t in self._pristine.items()})
            else:
                for path, layer in lora_layers(self.roberta).items():
                    weight = state[f"{path}.weight"]
                    state[f"{path}.weight"] = weight + layer.delta_weight().to(weight.dtype)
        finally:
            if was_merged:
                self.merge_adapter()
        return state

    def merge_and_unload(self) -> nn.Module:
        """A standalone model with the adapter folded in; this model is left as it was.

        SQuAD: the family's `...ForQuestionAnswering` (`RobertaForQuestionAnswering`, `BertForQuestionAnswering`,
        ...); GLUE with the "roberta" head: the family's `...ForSequenceClassification` (DistilBERT has none
        with that head: `MergedClassifier`); GLUE with the light head: `MergedClassifier` (the encoder plus
        the light head). See `model.standalone`. The copy costs one model's memory for a moment.
        """
        head = {n: t.detach().clone() for n, t in self.head_module.state_dict().items()}
        model = standalone_model(self._adapter_config, self.config, self.merged_encoder_state_dict(), head)
        return model.to(self._device()).train(self.training)

    def unload(self) -> PreTrainedModel:
        """The plain base encoder (no LoRA; the base's own biases, LayerNorms and embeddings) as a new
        encoder of its family (`RobertaModel`, `BertModel`, ...); this model keeps its adapter."""
        encoder = plain_encoder(self.config, self.merged_encoder_state_dict(plain_base=True))
        return encoder.to(self._device()).train(self.training)

    def _require_full_precision(self, action: str) -> None:
        for name, parameter in self.roberta.named_parameters():
            if type(parameter) is not nn.Parameter or not parameter.is_floating_point():
                raise ConfigError(f"cannot {action} with a quantized base ({name} is a {type(parameter).__name__} of "
                                  f"{parameter.dtype}); load the base in full precision (no --quantize) and the adapter on it")

    # ----------------------------------------------------------------------------- the plain base
    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[LoraWrapperRoberta]:
        """`with model.disable_adapter():` the encoder is the plain base (no LoRA, base biases and
        LayerNorms); the adapter's head still runs on top (a head has no "base" version), so
        `model(...)` keeps its output type. The same module objects come back on exit, so an
        optimizer built before keeps working."""
        self._require_enabled("nest disable_adapter()")
        was_merged = self.merged
        self.unmerge_adapter()
        layers = unwrap_lora(self.roberta)
        live = dict(self.roberta.named_parameters())  # plain names now that LoRA is unwrapped
        saved: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name, tensor in self._pristine.items():
                    saved[name] = live[name].detach().clone()
                    live[name].copy_(tensor)
            self._disabled = True
            yield self
        finally:
            with torch.no_grad():
                for name, tensor in saved.items():
                    live[name].copy_(tensor)
            rewrap_lora(self.roberta, layers)
            self._disabled = False
            if was_merged:
                self.merge_adapter()

    def _require_enabled(self, action: str) -> None:
        if self._disabled:
            raise ConfigError(f"cannot {action} inside `with model.disable_adapter():`; leave the context first")

    def _live_base_parameters(self) -> dict[str, nn.Parameter]:
        """The encoder's base parameters by their plain names (LoRA factors left out)."""
        named = ((base_name(f"roberta.{n}"), p) for n, p in self.roberta.named_parameters())
        return {name: p for name, p in named if name is not None}

    def _save_pristine(self, names: frozenset[str]) -> None:
        """Copy (to the CPU) the base tensors in `names` not saved yet. Only valid while they still hold
        the base values: at construction, and in `apply_adapter` before an adapter overwrites them."""
        missing = names - self._pristine.keys()
        if missing:
            live = self._live_base_parameters()
            self._pristine.update({name: live[name].detach().to("cpu", copy=True) for name in sorted(missing)})

    # ----------------------------------------------------------------------------- changing the adapter
    def check_family(self, config: AdapterConfig, source: str | Path) -> None:
        """Raise AdapterError when `config` was trained on a base of another family (model_type): its
        tensors would land in another architecture. No override: train or import it for this family."""
        ours = self._adapter_config
        if config.model_type != ours.model_type:
            raise AdapterError(
                f"adapter {source} was trained on a {config.model_type!r} base ({config.base_model!r}) but this "
                f"model's base is a {ours.model_type!r} model ({ours.base_model!r}); load it on a {config.model_type} "
                f"base (--model), or train an adapter for the {ours.model_type} base"
            )

    def check_base(self, config: AdapterConfig, source: str | Path, allow_base_mismatch: bool = False) -> None:
        """Raise AdapterError when `config` was trained on a base of another family (always), or on another
        base (different fingerprint) unless `allow_base_mismatch`, which only warns."""
        self.check_family(config, source)
        ours = self._adapter_config
        theirs, mine = config.base_fingerprint, ours.base_fingerprint
        if theirs and mine and is_legacy_fingerprint(theirs) and not is_legacy_fingerprint(mine):
            mine = self._legacy_fingerprint()  # an adapter written by 0.1: its fingerprint, computed here once
        if theirs and mine and theirs != mine:
            message = (
                f"adapter {source} was trained on base {config.base_model!r} (fingerprint {theirs}) "
                f"but this model's base is {ours.base_model!r} (fingerprint {mine})"
            )
            if not allow_base_mismatch:
                raise AdapterError(message + "; load it on the same base, or pass allow_base_mismatch=True "
                                   "(CLI: --allow-base-mismatch) to load it anyway")
            logger.warning("%s; loading anyway because allow_base_mismatch=True", message)

    def _legacy_fingerprint(self) -> str | None:
        """This base's fingerprint as roberta-lora 0.1 computed it (cached: it reads every embedding value)."""
        if not hasattr(self, "_legacy_fingerprint_value"):
            self._legacy_fingerprint_value = legacy_base_fingerprint(self.roberta, self._pristine)
        return self._legacy_fingerprint_value

    def check_same_shape(self, config: AdapterConfig, source: str | Path) -> None:
        """Raise AdapterError unless `config` describes tensors of the same names and shapes as ours."""
        ours = self._adapter_config
        differences = [f"{f}: adapter {getattr(config, f)!r} vs model {getattr(ours, f)!r}" for f in _SHAPE_FIELDS
                       if getattr(config, f) != getattr(ours, f)]
        if differences:
            raise AdapterError(
                f"adapter {source} was built differently from this model ({'; '.join(differences)}); "
                "use LoraWrapperRoberta.from_adapter(dir) to build a matching model, or keep both in an "
                "AdapterBank (bank.load_adapter(dir, name))"
            )

    def apply_adapter(self, config: AdapterConfig, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Make this model hold the adapter (`config`, `tensors`): any task, rank, targets or head.

        LoRA layers and the head are rebuilt only when their shapes differ (build the optimizer after
        this), dropout probabilities follow `config`, base tensors the adapter does not bring get their
        base values back, then the adapter's tensors are copied in. The result equals
        `LoraWrapperRoberta.from_adapter` on that adapter bit for bit. The model keeps its mode, and stays
        merged if it was. `config`'s base fields are replaced by this model's base.

        Raises AdapterError when `config` is of another family (model_type) or the tensors do not fit it
        on this base.
        """
        self._require_enabled("change the adapter")
        config.validate()
        self.check_family(config, source)
        if config.method == "full" and any(not p.is_floating_point() for p in self.roberta.parameters()):
            raise AdapterError(f"{source} replaces every base weight (method 'full'); it cannot be loaded on a "
                               "quantized base: load it on a full-precision one")
        expected = self.expected_adapter_tensors(config)
        check_tensors(tensors, expected, str(source))
        was_merged = self.merged
        self.unmerge_adapter()
        self._save_pristine(overwritten_base_names(expected))  # before the new adapter overwrites them
        self._rebuild(config)
        ours = self._adapter_config
        self._adapter_config = replace(config, base_fingerprint=ours.base_fingerprint, base_model=ours.base_model)
        for layer in lora_layers(self.roberta).values():
            layer.dropout = float(config.lora_dropout)
        set_dropout(self.head_module, float(config.head_dropout))
        self.freeze_base()
        brought = {base_name(n) for n in tensors}
        live_base = self._live_base_parameters()
        live = dict(self.named_parameters())
        with torch.no_grad():
            for plain, tensor in self._pristine.items():
                if plain not in brought:
                    live_base[plain].copy_(tensor)
            for name, tensor in tensors.items():
                live[name].copy_(tensor)
        for layer in lora_layers(self.roberta).values():
            layer.forget_initial()  # a loaded adapter is whole: no PiSSA / OLoRA start to take out
        if was_merged:
            self.merge_adapter()
        self.train(self.training)  # rebuilt modules start in train mode; follow the model's mode

    def _rebuild(self, new: AdapterConfig) -> None:
        """Rebuild the LoRA layers and the head when `new` needs other shapes than the current adapter."""
        old = self._adapter_config
        device = self._device()
        # Fresh layers draw initial values that are overwritten at once; switching must not move the global RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if lora_spec(old) != lora_spec(new):
                strip_lora(self.roberta)
                self.replaced_modules = []
                if new.method == "lora":
                    self.replaced_modules = inject_lora(
                        self.roberta, new.targets, new.lora_rank, new.lora_alpha, new.lora_dropout,
                        **lora_options(new),
                    )
            if head_spec(old) != head_spec(new):
                dtype = next(self.head_module.parameters()).dtype
                delattr(self, head_attribute(old.task_type))
                setattr(self, head_attribute(new.task_type), build_head(new, self.config).to(device=device, dtype=dtype))

    # ----------------------------------------------------------------------------- files
    def save_adapter(self, directory: str | Path, metrics: dict | None = None,
                     extra_files: dict[str, str] | None = None) -> Path:
        """Write adapter.safetensors (the adapter's tensors only) and adapter_config.json; the folder is
        replaced as one unit, so a kill mid-save leaves the previous adapter or this one, never a mix.

        Args:
            directory: the adapter folder to write: a new or empty folder, or an adapter folder (ours) to
                replace, whose other files (a README.md card, a user's notes) are kept.
            metrics: stored in the config (default: the metrics it already holds).
            extra_files: file name -> text saved in the same step, e.g. {"README.md": card}, so it always
                describes the tensors beside it.

        Raises:
            ConfigError: `directory` is a file, the working directory (or holds it), a model checkpoint folder,
                a PEFT adapter, or a folder with other files that is not an adapter folder; nothing is written.
        """
        self._require_enabled("save the adapter")
        directory = Path(directory)
        _check_adapter_destination(directory)
        config, tensors = self.portable_adapter()
        config = replace(config, metrics=dict(metrics or config.metrics))
        save_adapter_files(directory, tensors, config, extra_files)
        return directory

    def save_pretrained(self, save_directory: str | Path, metrics: dict | None = None) -> Path:
        """PEFT's name for `save_adapter`: the same two files (adapter.safetensors, adapter_config.json)."""
        return self.save_adapter(save_directory, metrics=metrics)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> LoraWrapperRoberta:
        """PEFT's name for `from_adapter`: an adapter folder or a Hub repo id `user/name[@revision]`, on the
        base it records (or `model_id=`); in eval mode."""
        return cls.from_adapter(pretrained_model_name_or_path, **kwargs)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    commit_message: str | None = None, license: str | None = None) -> str:
        """Upload this adapter to the hub repo `repo_id` (created when missing) with the model card
        `roberta-lora push` writes; returns the repo URL. Saved first into a temporary folder, so nothing
        on disk changes. Raises ConfigError offline or for a bad repo id, before anything is uploaded."""
        from roberta_lora.model.hub_card import push_adapter

        with tempfile.TemporaryDirectory(prefix="roberta-lora-push-") as staging:
            folder = self.save_adapter(Path(staging) / "adapter")
            return push_adapter(folder, repo_id, private=private, token=token, commit_message=commit_message,
                                license=license)

    def load_adapter(
        self, directory: str | Path, adapter_name: str | None = None, allow_base_mismatch: bool = False
    ) -> AdapterConfig:
        """Load a saved adapter into this model, replacing its tensors (same shapes: task type, classes,
        rank, targets, head). Dropout probabilities follow the loaded config.

        Raises AdapterError on a corrupt file, wrong keys or shapes, or a different base model
        (unless `allow_base_mismatch`, which only warns). To keep several adapters, use
        `roberta_lora.AdapterBank`.
        """
        if adapter_name is not None:
            raise ConfigError(
                f"LoraWrapperRoberta holds one adapter, so it cannot load {str(directory)!r} as {adapter_name!r}; "
                "for named adapters use roberta_lora.AdapterBank: bank = AdapterBank(model); "
                "bank.load_adapter(dir, name); bank.set_adapter(name)"
            )
        self._require_enabled("load an adapter")
        directory = adapter_folder(directory)  # a folder, or a Hub repo id user/name[@rev]
        config, digest = read_adapter_config(directory)
        self.check_family(config, directory)
        self.check_same_shape(config, directory)
        self.check_base(config, directory, allow_base_mismatch)
        tensors = read_adapter_tensors(directory, digest)
        self.apply_adapter(config, tensors, source=str(directory))
        return config

    @classmethod
    def from_adapter(
        cls,
        directory: str | Path,
        model_id: BaseSpec | None = None,
        allow_base_mismatch: bool = False,
        attn_implementation: str | None = None,
        quantize: str | None = None,
    ) -> LoraWrapperRoberta:
        """Rebuild the model an adapter was saved from and load it; returned in eval mode.

        Args:
            directory: the adapter folder.
            model_id: the base to load it on; defaults to the base recorded in the adapter.
            allow_base_mismatch: load even when the base fingerprint differs (warns).
            quantize: "4bit" / "8bit" to load the base through bitsandbytes (CUDA only).
        """
        directory = adapter_folder(directory)  # a folder, or a Hub repo id user/name[@rev]
        config, _ = read_adapter_config(directory)
        base = model_id if model_id is not None else config.base_model
        if base is None:
            raise AdapterError(f"adapter {directory} records no base model; pass model_id (CLI: --model)")
        model = cls(
            task_type=config.task_type,
            num_classes=config.num_classes,
            model_id=base,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            targets=config.targets,
            train_biases=config.train_biases,
            train_embeddings=config.train_embeddings,
            train_layer_norms=config.train_layer_norms,
            head=config.head,
            head_dropout=config.head_dropout,
            label_names=config.label_names,
            attn_implementation=attn_implementation,
            task=config.task,
            method=config.method,
            quantize=quantize,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
            # PiSSA / OLoRA only start a run; the file holds the whole update for the unmodified base
            init_lora_weights="kaiming" if config.init_lora_weights in LORA_INITS_FROM_BASE else config.init_lora_weights,
            layers_to_transform=config.layers_to_transform,
        )
        model.load_adapter(directory, allow_base_mismatch=allow_base_mismatch)
        if not isinstance(base, (str, Path)):
            model.adapter_config.base_model = config.base_model
        return model.eval()


# --------------------------------------------------------------------------------- argument checks
def _adapter_config_of(**args: Any) -> AdapterConfig:
    """The AdapterConfig that `LoraWrapperRoberta`'s arguments describe.

    Types are checked here (what `AdapterConfig.validate` assumes), values by `validate` itself; a
    mistyped argument is replaced by its default for that pass, so every problem is reported at once.

    Raises:
        ConfigError: listing each bad argument, what it received and what is expected.
    """
    problems: list[str] = []

    def bad(name: str, expected: str, default: Any) -> Any:
        problems.append(f"{name}={args[name]!r:.80} (expected {expected})")
        return default

    def integer(name: str, default: Any) -> Any:
        value = args[name]
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return int(value) if ok else bad(name, "an integer", default)

    def real(name: str, default: float) -> float:
        value = args[name]
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return float(value) if ok else bad(name, "a number", default)

    def optional_text(name: str, example: str) -> str | None:
        value = args[name]
        return value if value is None or isinstance(value, str) else bad(name, f"None or a string, e.g. {example}", None)

    task_type = args["task_type"]
    if not isinstance(task_type, str):
        task_type = bad("task_type", f"one of {list(TASK_TYPES)}", "glue")
    label_names = args["label_names"]
    if label_names is None:
        label_names = []
    elif not isinstance(label_names, (list, tuple)) or not all(isinstance(n, str) for n in label_names):
        label_names = bad("label_names", 'a list of class names in index order, e.g. ["negative", "positive"]', [])
    num_classes = args["num_classes"]
    if task_type.startswith("squad"):
        num_classes = 2  # the span head: start and end
    elif num_classes is None:
        num_classes = len(label_names) if label_names else 2
    else:
        num_classes = integer("num_classes", len(label_names) or 2)
    lora_rank = integer("lora_rank", 8)
    default_alpha = float(lora_rank) if lora_rank >= 1 else 8.0  # alpha = r unless given (a bad r: no second error)
    lora_alpha = default_alpha if args["lora_alpha"] is None else real("lora_alpha", default_alpha)
    targets = args["targets"]
    try:
        if not (targets is None or isinstance(targets, str)
                or (isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets))):
            raise ConfigError('expected "query,value", "all-linear" or a list of names such as ["query", "value"]')
        resolved = list(resolve_targets(targets))
    except ConfigError as error:
        problems.append(f"targets={targets!r:.80} ({error})")
        resolved = list(resolve_targets(None))
    flags = {}
    for name in ("train_biases", "train_layer_norms", "train_embeddings", "use_rslora", "use_dora"):
        flags[name] = args[name] if isinstance(args[name], bool) else bad(name, "True or False", False)
    seed = args["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not -(2**63) <= int(seed) < 2**64):
        bad("seed", "None or an integer (e.g. 0), within 64 bits", None)
    model_id = args["model_id"]
    if not isinstance(model_id, (str, os.PathLike, PretrainedConfig, PreTrainedModel)):
        model_id = bad("model_id", "a hub id or a checkpoint folder (str or Path), a transformers config or an "
                       "encoder model", "")
    optional_text("attn_implementation", "'sdpa' or 'eager'")
    optional_text("quantize", "'4bit' or '8bit'")
    task = optional_text("task", "'sst2'")
    init = args["init_lora_weights"]
    if not isinstance(init, str):
        init = bad("init_lora_weights", f"one of {list(LORA_INITS)}", "kaiming")
    layers = args["layers_to_transform"]
    if layers is not None:
        if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
            layers = [int(layers)]  # PEFT accepts one index too
        elif isinstance(layers, (list, tuple)) and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                                       for i in layers):
            layers = [int(i) for i in layers]
        else:
            layers = bad("layers_to_transform", "None or a list of layer indexes, e.g. [10, 11]", None)
    config = AdapterConfig(
        task_type=task_type, num_classes=num_classes, label_names=list(label_names), lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_dropout=real("lora_dropout", 0.1), targets=resolved, head=args["head"],
        head_dropout=real("head_dropout", 0.1), **flags,
        base_model=None if isinstance(model_id, (PretrainedConfig, PreTrainedModel)) else str(model_id),
        task=task, method=args["method"], package_version=__version__, init_lora_weights=init,
        layers_to_transform=layers,
    )
    try:
        config.validate()
    except ConfigError as error:
        problems.append(str(error).removeprefix("invalid adapter configuration: "))
    if args["quantize"] not in (None, "none") and init in LORA_INITS_FROM_BASE:
        problems.append(f"init_lora_weights={init!r} starts from the base weight, which a {args['quantize']} base "
                        "holds quantized (use kaiming or gaussian with quantize)")
    if isinstance(lora_rank, int) and lora_rank % (step := LORA_INIT_RANK_STEP.get(init, 1)):
        problems.append(f"init_lora_weights={init!r} needs a lora_rank that is a multiple of {step}, got {lora_rank}")
    if init in LORA_INITS_FROM_BASE and lora_rank > MAX_LORA_RANK // 2:
        problems.append(f"init_lora_weights={init!r} saves a rank-{2 * lora_rank} adapter; lora_rank must be at most "
                        f"{MAX_LORA_RANK // 2}")
    if args["quantize"] not in (None, "none") and flags["use_dora"]:
        problems.append(f"use_dora=True reads the base weight, which a {args['quantize']} base holds quantized "
                        "(use plain LoRA with quantize, or drop quantize)")
    if args["quantize"] not in (None, "none") and args["method"] == "full":
        problems.append(f"method='full' trains every base weight, which a {args['quantize']} base cannot hold "
                        "(use method='lora' with quantize, or drop quantize)")
    if problems:
        raise ConfigError("invalid LoraWrapperRoberta arguments: " + "; ".join(problems))
    return config


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {str(value.dtype).removeprefix('torch.')} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r:.60}"


def _is_integer(tensor: torch.Tensor) -> bool:
    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


# --------------------------------------------------------------------------------- where an adapter is saved
def _check_adapter_destination(directory: Path) -> None:
    """Refuse to save an adapter where it would damage something, as the CLI's output checks do: a file, the
    working directory, a model checkpoint, a PEFT adapter, or a folder with files that is not an adapter's.

    A new or empty folder, or one of our adapter folders (its other files are carried over), is fine.

    Raises:
        ConfigError: naming the path, what is there and what to do.
    """
    where = f"cannot save the adapter to {directory}"
    elsewhere = f"save it into a new folder, e.g. {directory / 'adapter'}"
    existing = next((p for p in (directory, *directory.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        kind = "file" if existing.is_file() else "non-folder entry"
        what = f"is a {kind}" if existing == directory else f"lies under the {kind} {existing}"
        raise ConfigError(f"{where}: it {what}, not a folder; pass a folder path (a new one, or an adapter folder "
                          "to replace)")
    if existing != directory:
        return  # a new folder
    cwd = Path.cwd()
    if directory.resolve() == cwd or directory.resolve() in cwd.parents:
        raise ConfigError(f"{where}: it holds the working directory {cwd}, which the save would replace; {elsewhere}")
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise ConfigError(f"{where}: the folder cannot be read ({error.strerror or error}); choose a readable folder "
                          "you can write to") from None
    weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES) and n not in (WEIGHTS_NAME, *_PEFT_WEIGHTS)]
    tokenizer = [n for n in names if n in _TOKENIZER_FILES]
    if "config.json" in names and (weights or tokenizer):
        raise ConfigError(
            f"{where}: it is a model checkpoint (config.json with {', '.join((weights + tokenizer)[:3])}); an "
            f"{CONFIG_NAME} there makes transformers read the folder as a PEFT adapter and the model no longer "
            f"loads. Save the adapter in a folder of its own, e.g. {directory.parent / (directory.name + '-adapter')}"
        )
    peft = [n for n in names if n in _PEFT_WEIGHTS] or (["peft_type in " + CONFIG_NAME] if _is_peft_config(
        directory / CONFIG_NAME) else [])
    if peft:
        raise ConfigError(f"{where}: it holds a PEFT adapter ({peft[0]}), whose {CONFIG_NAME} the save would "
                          f"replace; {elsewhere}, or convert it with `roberta-lora import-peft`")
    if names and WEIGHTS_NAME not in names and CONFIG_NAME not in names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ConfigError(
            f"{where}: the folder holds files that are not an adapter's ({shown}); an adapter is saved into a new "
            f"or empty folder, or over an adapter folder ({WEIGHTS_NAME} + {CONFIG_NAME}): {elsewhere}"
        )


def _is_peft_config(path: Path) -> bool:
    """adapter_config.json as PEFT writes it (it names its `peft_type`); ours never has that key."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "peft_type" in data
