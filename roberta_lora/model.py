"""`LoraWrapperRoberta`: a frozen RoBERTa encoder with LoRA, a task head and small adapter files."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import RobertaConfig, RobertaModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from roberta_lora import __version__
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

logger = logging.getLogger(__name__)

BaseSpec = str | Path | RobertaConfig | RobertaModel


def load_base_encoder(model_id: BaseSpec, attn_implementation: str | None = None) -> RobertaModel:
    """A RoBERTa encoder (no pooler) from a hub id, a local checkpoint dir, a config (random weights) or a model."""
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
        local_hint = "it is not a local directory" if not Path(str(model_id)).is_dir() else "the directory is incomplete"
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
    ) -> None:
        super().__init__()
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
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        self.roberta = load_base_encoder(model_id, attn_implementation)
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

    # ----------------------------------------------------------------------------- structure
    @property
    def task_type(self) -> str:
        return self.adapter_config.task_type

    @property
    def head_module(self) -> nn.Module:
        return self.classifier if self.task_type == "glue" else self.qa_outputs

    def freeze_base(self) -> None:
        """Train only LoRA factors, the head, and the base tensors the config asks for."""
        cfg = self.adapter_config
        for parameter in self.parameters():
            parameter.requires_grad = cfg.method == "full"
        if cfg.method == "full":
            return
        self.head_module.requires_grad_(True)
        if cfg.method == "head":
            return
        for module in self.roberta.modules():
            if cfg.train_layer_norms and isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
            elif cfg.train_embeddings and isinstance(module, nn.Embedding):
                module.requires_grad_(True)
            elif cfg.train_biases and isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.requires_grad = True
        for layer in lora_layers(self.roberta).values():
            layer.lora_A.weight.requires_grad = True
            layer.lora_B.weight.requires_grad = True

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors an adapter file holds: every parameter that trains."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

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
        """Fold every LoRA update into its base weight (idempotent)."""
        for layer in lora_layers(self.roberta).values():
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Restore the base weights exactly (idempotent)."""
        for layer in lora_layers(self.roberta).values():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in lora_layers(self.roberta).values())

    # ----------------------------------------------------------------------------- files
    def save_adapter(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write adapter.safetensors (trainable tensors only) and adapter_config.json, atomically."""
        directory = Path(directory)
        config = replace(self.adapter_config, metrics=dict(metrics or self.adapter_config.metrics))
        save_adapter_files(directory, self.trainable_state_dict(), config)
        return directory

    def load_adapter(self, directory: str | Path, allow_base_mismatch: bool = False) -> AdapterConfig:
        """Load a saved adapter onto this model (same task type, classes, rank, targets, head).

        Raises AdapterError on a corrupt file, wrong keys or shapes, or a different base model
        (unless `allow_base_mismatch`, which only warns).
        """
        config, digest = read_adapter_config(Path(directory))
        self._check_compatible(config, Path(directory), allow_base_mismatch)
        tensors = read_adapter_tensors(Path(directory), digest)
        live = dict(self.named_parameters())
        expected = {name: p for name, p in live.items() if p.requires_grad}
        check_tensors(tensors, expected, str(Path(directory)))
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

    def _check_compatible(self, config: AdapterConfig, directory: Path, allow_base_mismatch: bool) -> None:
        ours = self.adapter_config
        fields = ("method", "task_type", "num_classes", "lora_rank", "lora_alpha", "targets", "head", "train_biases", "train_layer_norms",
                  "train_embeddings")
        differences = [f"{f}: adapter {getattr(config, f)!r} vs model {getattr(ours, f)!r}" for f in fields
                       if getattr(config, f) != getattr(ours, f)]
        if differences:
            raise AdapterError(
                f"adapter {directory} was built differently from this model ({'; '.join(differences)}); "
                "use LoraWrapperRoberta.from_adapter(dir) to build a matching model"
            )
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
    ) -> LoraWrapperRoberta:
        """Rebuild the model an adapter was saved from and load it.

        Args:
            directory: the adapter folder.
            model_id: the base to load it on; defaults to the base recorded in the adapter.
            allow_base_mismatch: load even when the base fingerprint differs (warns).
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
