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
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from roberta_lora._version import __version__
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.lora.injection import inject_lora, lora_layers, rewrap_lora, strip_lora, unwrap_lora
from roberta_lora.lora.targets import resolve_targets
from roberta_lora.model.adapter_files import (
    base_fingerprint,
    check_tensors,
    read_adapter_tensors,
    save_adapter_files,
)
from roberta_lora.model.base import BaseSpec, load_base_encoder
from roberta_lora.model.config import AdapterConfig, head_attribute, read_adapter_config
from roberta_lora.model.families import family_of
from roberta_lora.model.heads import build_head, set_dropout
from roberta_lora.model.standalone import plain_encoder, standalone_model
from roberta_lora.model.tensors import (
    adapter_parameters,
    base_name,
    expected_tensors,
    head_spec,
    lora_spec,
    overwritten_base_names,
)
from roberta_lora.sources import adapter_folder

logger = logging.getLogger(__name__)

# Fields that decide an adapter's tensors: loading into the model's own adapter needs them equal.
_SHAPE_FIELDS = ("method", "task_type", "num_classes", "lora_rank", "lora_alpha", "targets", "head", "train_biases",
                 "train_layer_norms", "train_embeddings")


class LoraWrapperRoberta(nn.Module):
    """An encoder with LoRA on the chosen projections, a task head, and everything else frozen.

    Args:
        task_type: "glue" (classification, or regression when num_classes == 1), "squad_v1" or "squad_v2".
        num_classes: number of GLUE classes (1 = regression). Ignored for SQuAD (always start/end).
        model_id: hub id ("roberta-base", "bert-base-uncased", ...), local checkpoint dir, a config (random
            weights: RobertaConfig, BertConfig, DistilBertConfig, ...) or a bare encoder (RobertaModel, BertModel, ...).
            Its config.model_type picks the family; an unsupported one is refused (ConfigError).
        lora_rank: r. lora_alpha: scale numerator (default: equal to r, i.e. scaling 1 as in the tutorial).
        lora_dropout: dropout on the LoRA branch. targets: "query,value" (default), "all-linear" or a list.
        train_biases / train_layer_norms / train_embeddings: which base tensors also train (and are saved).
        head: "light" (LayerNorm, dropout, Linear) or "roberta" (transformers' classification head); GLUE only.
        head_dropout: dropout inside the head. label_names: class names in index order (stored in the adapter).
        seed: when given, the LoRA A draw and the head initialisation are reproducible (the global RNG is untouched).
        attn_implementation: "sdpa" or "eager" to override the checkpoint's choice.
        task: the task name to record in the adapter (e.g. "sst2").
        method: "lora" (default), "head" (no LoRA, only the head trains) or "full" (everything trains).
        quantize: None, "4bit" (NF4, bf16 compute) or "8bit": load the frozen base through bitsandbytes
            (needs CUDA); LoRA factors and the head stay in full precision.

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
    ) -> None:
        super().__init__()
        if task_type == "glue" and num_classes is None:
            num_classes = len(label_names) if label_names else 2
        config = AdapterConfig(
            task_type=task_type,
            num_classes=2 if str(task_type).startswith("squad") else num_classes,  # type: ignore[arg-type]
            label_names=list(label_names or []),
            lora_rank=lora_rank,
            lora_alpha=float(lora_rank if lora_alpha is None else lora_alpha),
            lora_dropout=lora_dropout,
            targets=list(resolve_targets(targets)),
            train_biases=train_biases,
            train_layer_norms=train_layer_norms,
            train_embeddings=train_embeddings,
            head=head,
            head_dropout=head_dropout,
            base_model=None if isinstance(model_id, (PretrainedConfig, PreTrainedModel)) else str(model_id),
            task=task,
            method=method,
            package_version=__version__,
        )
        config.validate()
        if quantize not in (None, "none") and method == "full":
            raise ConfigError(f"method='full' trains every base weight, which a {quantize} base cannot hold; "
                              "use method='lora' with --quantize, or drop --quantize")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        self.roberta = load_base_encoder(model_id, attn_implementation, quantize)
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
                self.roberta, config.targets, config.lora_rank, config.lora_alpha, config.lora_dropout, generator
            )
        logger.info("LoRA (r=%d) on %d modules: %s ...", config.lora_rank, len(self.replaced_modules),
                    self.replaced_modules[:2])
        setattr(self, head_attribute(config.task_type), build_head(config, self.config, generator).to(self._device()))
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
        segments (BERT); RoBERTa-style families and DistilBERT have none and ignore them.
        """
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
        if config.base_fingerprint and ours.base_fingerprint and config.base_fingerprint != ours.base_fingerprint:
            message = (
                f"adapter {source} was trained on base {config.base_model!r} (fingerprint {config.base_fingerprint}) "
                f"but this model's base is {ours.base_model!r} (fingerprint {ours.base_fingerprint})"
            )
            if not allow_base_mismatch:
                raise AdapterError(message + "; load it on the same base, or pass allow_base_mismatch=True "
                                   "(CLI: --allow-base-mismatch) to load it anyway")
            logger.warning("%s; loading anyway because allow_base_mismatch=True", message)

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
                        self.roberta, new.targets, new.lora_rank, new.lora_alpha, new.lora_dropout
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
            directory: the adapter folder to write; other files already in it are kept.
            metrics: stored in the config (default: the metrics it already holds).
            extra_files: file name -> text saved in the same step, e.g. {"README.md": card}, so it always
                describes the tensors beside it.
        """
        self._require_enabled("save the adapter")
        directory = Path(directory)
        config = replace(self._adapter_config, metrics=dict(metrics or self._adapter_config.metrics))
        save_adapter_files(directory, self.adapter_state_dict(), config, extra_files)
        return directory

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
        )
        model.load_adapter(directory, allow_base_mismatch=allow_base_mismatch)
        if not isinstance(base, (str, Path)):
            model.adapter_config.base_model = config.base_model
        return model.eval()
