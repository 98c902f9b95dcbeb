"""`LoraWrapperRoberta`: a frozen RoBERTa encoder with LoRA, a task head and small adapter files.

One model can hold several named adapters (`load_adapter(dir, name)`, `set_adapter(name)`, see
multi_adapter.py), fold the active one into the base (`merge_adapter()`), combine adapters
(`add_weighted_adapter`) and hand out standalone transformers models (`merge_and_unload()`,
see merge_export.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import RobertaConfig, RobertaModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from roberta_lora import __version__, multi_adapter
from roberta_lora.adapter_config import AdapterConfig
from roberta_lora.adapter_io import (
    base_fingerprint,
    check_tensors,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter_files,
)
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.heads import build_classification_head, build_question_answering_head
from roberta_lora.injection import inject_lora, lora_layers, resolve_targets
from roberta_lora.multi_adapter import DEFAULT_ADAPTER, AdapterBank, adapter_parameters, head_name

logger = logging.getLogger(__name__)

BaseSpec = str | Path | RobertaConfig | RobertaModel


def load_base_encoder(
    model_id: BaseSpec, attn_implementation: str | None = None, quantize: str | None = None
) -> RobertaModel:
    """A RoBERTa encoder (no pooler) from a hub id, a local checkpoint dir, a config (random weights) or a model.

    `quantize` ("4bit" or "8bit") loads the checkpoint's linear layers through bitsandbytes (CUDA only).
    """
    if quantize not in (None, "none"):
        from roberta_lora.quantization import load_quantized_encoder

        return load_quantized_encoder(model_id, quantize, attn_implementation)
    if isinstance(model_id, RobertaModel):
        return model_id
    if isinstance(model_id, RobertaConfig):
        config = model_id
        if attn_implementation is not None:
            config = RobertaConfig(**{**config.to_dict(), "_attn_implementation": attn_implementation})
        return RobertaModel(config, add_pooling_layer=False)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return RobertaModel.from_pretrained(str(model_id), add_pooling_layer=False, **kwargs)
    except OSError as error:
        # os.path.isdir, not Path.is_dir: it returns False (no OSError) for names the OS refuses, e.g. too long.
        local_hint = "it is not a local directory" if not os.path.isdir(str(model_id)) else "the directory is incomplete"
        raise ConfigError(
            f"could not load the base model {str(model_id)!r} ({local_hint}; {str(error).splitlines()[0]}). "
            "Without network access pass a local checkpoint directory, e.g. --model /path/to/roberta-base "
            "(a folder with config.json and model.safetensors)"
        ) from None


class LoraWrapperRoberta(nn.Module):
    """RoBERTa with LoRA on the chosen projections, a task head, and everything else frozen.

    Args:
        task_type: "glue" (classification, or regression when num_classes == 1), "squad_v1" or "squad_v2".
        num_classes: number of GLUE classes (1 = regression). Ignored for SQuAD (always start/end).
        model_id: hub id ("roberta-base"), local checkpoint dir, a RobertaConfig (random weights) or a RobertaModel.
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

    The adapter built here is named "default"; more can be loaded next to it by name.
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
        self._bank = AdapterBank(active=DEFAULT_ADAPTER)
        if task_type == "glue" and num_classes is None:
            num_classes = len(label_names) if label_names else 2
        self.adapter_config = AdapterConfig(
            task_type=task_type,
            num_classes=2 if task_type.startswith("squad") else int(num_classes),  # type: ignore[arg-type]
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
            base_model=None if isinstance(model_id, (RobertaConfig, RobertaModel)) else str(model_id),
            task=task,
            method=method,
            package_version=__version__,
        )
        self.adapter_config.validate()
        cfg = self.adapter_config
        if quantize not in (None, "none") and method == "full":
            raise ConfigError(f"method='full' trains every base weight, which a {quantize} base cannot hold; "
                              "use method='lora' with --quantize, or drop --quantize")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        self.roberta = load_base_encoder(model_id, attn_implementation, quantize)
        self.config = self.roberta.config
        # Computed before anything is trained or merged: this is "the base" adapters are checked against.
        cfg.base_fingerprint = base_fingerprint(self.roberta)
        self.replaced_modules: list[str] = []
        if cfg.method == "lora":
            self.replaced_modules = inject_lora(
                self.roberta, cfg.targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, generator
            )
        logger.info("LoRA (r=%d) on %d modules: %s ...", cfg.lora_rank, len(self.replaced_modules), self.replaced_modules[:2])
        device = next(self.roberta.parameters()).device
        if cfg.task_type == "glue":
            self.classifier = build_classification_head(cfg.head, self.config, cfg.num_classes, cfg.head_dropout, generator)
            self.classifier.to(device)
        else:
            self.qa_outputs = build_question_answering_head(self.config, generator).to(device)
        self.freeze_base()
        # Before any training: the base values this adapter will overwrite (biases, LayerNorms, ...).
        self._bank.base_names[DEFAULT_ADAPTER] = multi_adapter.overwritten_base_names(self.adapter_state_dict())
        multi_adapter.snapshot_pristine(self, self._bank.base_names[DEFAULT_ADAPTER])

    # ----------------------------------------------------------------------------- structure
    @property
    def adapter_config(self) -> AdapterConfig:
        """The active adapter's configuration (its task type and head decide what `forward` returns)."""
        return self._bank.configs[self._bank.active]

    @adapter_config.setter
    def adapter_config(self, config: AdapterConfig) -> None:
        self._bank.configs[self._bank.active] = config

    @property
    def task_type(self) -> str:
        return self.adapter_config.task_type

    @property
    def head_module(self) -> nn.Module:
        return getattr(self, head_name(self.adapter_config))

    def freeze_base(self) -> None:
        """Train only what the adapter holds: LoRA factors, the head, and the base tensors the config asks for
        (method "head": the head only; "full": everything)."""
        self.requires_grad_(False)
        for parameter in adapter_parameters(self.roberta, self.head_module, self.adapter_config).values():
            parameter.requires_grad = True

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors the active adapter's file holds (those `freeze_base` makes trainable), not copied."""
        return {n: p.detach() for n, p in adapter_parameters(self.roberta, self.head_module, self.adapter_config).items()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Alias of `adapter_state_dict` (the tensors an adapter file holds)."""
        return self.adapter_state_dict()

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
    ) -> SequenceClassifierOutput | QuestionAnsweringModelOutput:
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        if self.task_type == "glue":
            logits = self.classifier(hidden)  # (B, C)
            loss = None if labels is None else self._classification_loss(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)
        start_logits, end_logits = self.qa_outputs(hidden).unbind(dim=-1)  # each (B, T)
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
        if self.adapter_config.num_classes == 1:
            predictions = logits.squeeze(-1) if labels.dim() == 1 else logits
            if predictions.shape != labels.shape:
                # Broadcasting (B, 1) against (B,) would silently compute a (B, B) loss.
                raise ConfigError(f"regression labels have shape {tuple(labels.shape)}, logits {tuple(logits.shape)}")
            return F.mse_loss(predictions, labels.to(predictions.dtype))
        return F.cross_entropy(logits, labels.long())

    # ----------------------------------------------------------------------------- merge
    def merge_adapter(self) -> None:
        """Fold the active adapter's LoRA updates into the base weights (idempotent): inference then
        costs what the base costs. Biases, LayerNorms and the head are already in place."""
        for layer in lora_layers(self.roberta).values():
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Restore the base weights exactly (idempotent)."""
        for layer in lora_layers(self.roberta).values():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in lora_layers(self.roberta).values())

    def merge_and_unload(self) -> nn.Module:
        """A standalone model with the active adapter folded in; this model is left as it was.

        SQuAD: transformers' `RobertaForQuestionAnswering`; GLUE with the "roberta" head:
        `RobertaForSequenceClassification`; GLUE with the light head: `MergedLightClassifier`
        (an encoder plus the light head). The copy costs one model's memory for a moment.
        """
        from roberta_lora.merge_export import standalone_model

        return standalone_model(self)

    def unload(self) -> RobertaModel:
        """The plain base encoder (no LoRA; the base's own biases, LayerNorms and embeddings) as a new
        `RobertaModel`; this model keeps its adapters."""
        from roberta_lora.merge_export import plain_base_model

        return plain_base_model(self)

    # ----------------------------------------------------------------------------- several adapters
    @property
    def active_adapter(self) -> str:
        """The name of the adapter the forward pass uses ("default" for the one the model was built with)."""
        return self._bank.active

    @property
    def adapters(self) -> list[str]:
        """Names of every loaded adapter, in load order."""
        return list(self._bank.configs)

    def set_adapter(self, name: str) -> None:
        """Make `name` the active adapter: its LoRA layers, biases, LayerNorms and head take over.

        The outgoing adapter's current tensors are kept (training progress is not lost). LoRA
        layers and heads are rebuilt when rank, targets or head differ, so build the optimizer
        after switching. A merged model stays merged (with the new adapter).
        """
        multi_adapter.set_adapter(self, name)

    def delete_adapter(self, name: str) -> None:
        """Forget an inactive adapter (the active one cannot be deleted: switch first)."""
        multi_adapter.delete_adapter(self, name)

    def disable_adapter(self) -> AbstractContextManager[LoraWrapperRoberta]:
        """`with model.disable_adapter():` the encoder is the plain base (no LoRA, base biases and
        LayerNorms); the active adapter's head still runs on top. Everything is restored on exit."""
        return multi_adapter.disable_adapter(self)

    def add_weighted_adapter(
        self,
        adapters: Sequence[str],
        weights: Sequence[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        average_non_lora: bool = False,
    ) -> AdapterConfig:
        """Combine LoRA adapters on the same targets into a new (inactive) adapter; see
        merge_export.add_weighted_adapter for the combination types and what happens to heads."""
        from roberta_lora.merge_export import add_weighted_adapter

        return add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank, average_non_lora)

    # ----------------------------------------------------------------------------- files
    def save_adapter(self, directory: str | Path, metrics: dict | None = None, adapter_name: str | None = None) -> Path:
        """Write adapter.safetensors (the adapter's tensors only) and adapter_config.json, atomically.

        Args:
            directory: the adapter folder to write.
            metrics: stored in the config (default: the metrics it already holds).
            adapter_name: which loaded adapter to save (default: the active one).
        """
        directory = Path(directory)
        name = self.active_adapter if adapter_name is None else adapter_name
        self._bank.require_known(name)
        base = self._bank.configs[name]
        if name == self.active_adapter:
            self._bank.require_enabled("save the active adapter")
        config = replace(base, metrics=dict(metrics or base.metrics))
        save_adapter_files(directory, multi_adapter.adapter_tensors(self, name), config)
        return directory

    def load_adapter(
        self, directory: str | Path, adapter_name: str | None = None, allow_base_mismatch: bool = False
    ) -> AdapterConfig:
        """Load a saved adapter.

        Without `adapter_name` (or with the active adapter's name) the files replace the active
        adapter's tensors, which must have the same shapes (task type, classes, rank, targets,
        head). With a new name the adapter is added next to the others, any task or rank,
        without becoming active: call `set_adapter(name)`.

        Raises AdapterError on a corrupt file, wrong keys or shapes, or a different base model
        (unless `allow_base_mismatch`, which only warns).
        """
        directory = Path(directory)
        if adapter_name is not None and adapter_name != self.active_adapter:
            return multi_adapter.load_named_adapter(self, directory, adapter_name, allow_base_mismatch)
        self._bank.require_enabled("load into the active adapter")
        config, digest = read_adapter_config(directory)
        self._check_compatible(config, directory)
        self._check_base(config, directory, allow_base_mismatch)
        tensors = read_adapter_tensors(directory, digest)
        live = self.adapter_state_dict()
        check_tensors(tensors, live, str(directory))
        was_merged = self.merged
        self.unmerge_adapter()
        with torch.no_grad():
            for name, tensor in tensors.items():
                live[name].copy_(tensor.to(live[name].dtype))
        if was_merged:
            self.merge_adapter()
        self.adapter_config = replace(
            config, base_fingerprint=self.adapter_config.base_fingerprint, base_model=self.adapter_config.base_model
        )
        return config

    def _check_compatible(self, config: AdapterConfig, directory: Path) -> None:
        ours = self.adapter_config
        fields = ("method", "task_type", "num_classes", "lora_rank", "lora_alpha", "targets", "head", "train_biases",
                  "train_layer_norms", "train_embeddings")
        differences = [f"{f}: adapter {getattr(config, f)!r} vs model {getattr(ours, f)!r}" for f in fields
                       if getattr(config, f) != getattr(ours, f)]
        if differences:
            raise AdapterError(
                f"adapter {directory} was built differently from this model ({'; '.join(differences)}); "
                "use LoraWrapperRoberta.from_adapter(dir) to build a matching model, or "
                "load_adapter(dir, adapter_name=...) to load it next to the active adapter"
            )

    def _check_base(self, config: AdapterConfig, directory: Path, allow_base_mismatch: bool) -> None:
        ours = self.adapter_config
        if config.base_fingerprint and ours.base_fingerprint and config.base_fingerprint != ours.base_fingerprint:
            message = (
                f"adapter {directory} was trained on base {config.base_model!r} (fingerprint {config.base_fingerprint}) "
                f"but this model's base is {ours.base_model!r} (fingerprint {ours.base_fingerprint})"
            )
            if not allow_base_mismatch:
                raise AdapterError(message + "; load it on the same base, or pass allow_base_mismatch=True "
                                   "(CLI: --allow-base-mismatch) to load it anyway")
            logger.warning("%s; loading anyway because allow_base_mismatch=True", message)

    @classmethod
    def from_adapter(
        cls,
        directory: str | Path,
        model_id: BaseSpec | None = None,
        allow_base_mismatch: bool = False,
        attn_implementation: str | None = None,
        quantize: str | None = None,
    ) -> LoraWrapperRoberta:
        """Rebuild the model an adapter was saved from and load it.

        Args:
            directory: the adapter folder.
            model_id: the base to load it on; defaults to the base recorded in the adapter.
            allow_base_mismatch: load even when the base fingerprint differs (warns).
            quantize: "4bit" / "8bit" to load the base through bitsandbytes (CUDA only).
        """
        config, _ = read_adapter_config(Path(directory))
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
        model.eval()
        return model


def adapter_size_bytes(directory: str | Path) -> int:
    """Size on disk of an adapter folder's tensor and config files."""
    directory = Path(directory)
    sizes = [directory / name for name in ("adapter.safetensors", "adapter_config.json")]
    missing = [str(p) for p in sizes if not p.is_file()]
    if missing:
        raise AdapterError(f"not an adapter folder, missing {missing}")
    return sum(p.stat().st_size for p in sizes)
