"""`AdapterConfig`: everything needed to rebuild a LoRA-adapted RoBERTa, stored as adapter_config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.heads import HEAD_KINDS
from roberta_lora.injection import resolve_targets

TASK_TYPES = ("glue", "squad_v1", "squad_v2")
# What trains: LoRA (+ the flagged extras and the head), only the head, or every parameter.
METHODS = ("lora", "head", "full")
FORMAT_VERSION = 1
# Upper bounds, so that a stranger's config cannot make `from_adapter` allocate without limit
# before the tensors are checked: a rank above the hidden size (768 / 1024) adds nothing, and a
# GLUE-style head with more classes than this is not what the toolkit is for.
MAX_LORA_RANK = 1024
MAX_NUM_CLASSES = 10_000


@dataclass
class AdapterConfig:
    """How an adapter was built. Field by field:

    task_type: "glue" (classification / regression head) or "squad_v1" / "squad_v2" (span head).
    num_classes: GLUE classes; 1 means regression (STS-B). Always 2 (start, end) for SQuAD.
    label_names: names of the classes in index order (empty for regression and SQuAD).
    lora_rank: r of every LoRA layer. lora_alpha: the update is scaled by lora_alpha / lora_rank.
    lora_dropout: dropout on the LoRA branch input during training.
    targets: adapted projections (see injection.TARGET_PATHS); default query and value.
    train_biases / train_layer_norms / train_embeddings: base tensors also trained and saved.
    head: "light" or "roberta" (GLUE only). head_dropout: dropout inside the head.
    base_model: the hub id or path the base was loaded from (informational; may be overridden).
    base_fingerprint: hash of base weights the adapter was trained on; loading checks it.
    task: the task name (e.g. "sst2") when trained by the toolkit. metrics: validation results.
    method: "lora" (default); "head" (only the head trains, no LoRA); "full" (every parameter trains,
        so the "adapter" holds the whole model): the baselines the tutorials compare LoRA with.
    max_length / doc_stride: tokenization used in training (None: the task's default), reused by
        `evaluate` and `predict` so they see inputs exactly as training did.
    """

    task_type: str = "glue"
    num_classes: int = 2
    label_names: list[str] = field(default_factory=list)
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    train_biases: bool = True
    train_layer_norms: bool = True
    train_embeddings: bool = False
    head: str = "light"
    head_dropout: float = 0.1
    base_model: str | None = None
    base_fingerprint: str | None = None
    task: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    method: str = "lora"
    max_length: int | None = None
    doc_stride: int | None = None
    package_version: str = ""
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        """Raise ConfigError listing every invalid field at once."""
        problems = []
        if self.task_type not in TASK_TYPES:
            problems.append(f"task_type={self.task_type!r} (expected one of {list(TASK_TYPES)})")
        if not _int_in(self.num_classes, 1, MAX_NUM_CLASSES):
            problems.append(f"num_classes={self.num_classes!r} (expected an integer in 1..{MAX_NUM_CLASSES}; "
                            "1 means regression)")
        if self.task_type.startswith("squad") and self.num_classes != 2:
            problems.append(f"num_classes={self.num_classes!r} for {self.task_type} (the span head always has 2)")
        if self.label_names and len(self.label_names) != self.num_classes:
            problems.append(f"label_names has {len(self.label_names)} names but num_classes={self.num_classes}")
        if not _int_in(self.lora_rank, 1, MAX_LORA_RANK):
            problems.append(f"lora_rank={self.lora_rank!r} (expected an integer in 1..{MAX_LORA_RANK}, e.g. 8)")
        if not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            problems.append(f"lora_alpha={self.lora_alpha!r} (expected a positive finite number)")
        for name in ("lora_dropout", "head_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                problems.append(f"{name}={value!r} (expected a number in [0, 1))")
        if self.method not in METHODS:
            problems.append(f"method={self.method!r} (expected one of {list(METHODS)})")
        if self.head not in HEAD_KINDS:
            problems.append(f"head={self.head!r} (expected one of {list(HEAD_KINDS)})")
        try:
            resolve_targets(self.targets)
        except ConfigError as error:
            problems.append(f"targets={self.targets!r:.200} ({error})")
        if problems:
            raise ConfigError("invalid adapter configuration: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "adapter_config.json") -> AdapterConfig:
        """Parse a decoded JSON object, rejecting unknown keys and wrong types with AdapterError."""
        if not isinstance(data, dict):
            raise AdapterError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise AdapterError(f"{source}: unknown keys {unknown}; expected only {sorted(known)}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise AdapterError(
                f"{source}: format_version {data.get('format_version')!r} is not supported by this version "
                f"(expects {FORMAT_VERSION}); upgrade roberta-lora"
            )
        problems = [
            f"{name}={data[name]!r}" for name in data if not _type_ok(data[name], known[name].default, known[name])
        ]
        if problems:
            raise AdapterError(f"{source}: wrong value types: {', '.join(problems)}")
        config = cls(**data)
        try:
            config.validate()
        except ConfigError as error:
            raise AdapterError(f"{source}: {error}") from None
        return config


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _could_be_a_path(value: str) -> bool:
    """A hub id or a local path: no NUL byte, at most 4096 characters, each part at most 255."""
    return "\0" not in value and 0 < len(value) <= 4096 and all(len(part) <= 255 for part in re.split(r"[/\\]", value))


def _type_ok(value: Any, default: Any, spec: dataclasses.Field) -> bool:
    """A small structural type check for JSON-decoded values (no pickle, no eval)."""
    if spec.name == "base_model":  # `from_adapter` opens it: it must be something a path or a hub id can be
        return value is None or (isinstance(value, str) and _could_be_a_path(value))
    if spec.name == "base_fingerprint":  # as adapter_io.base_fingerprint writes it; "" would skip the check
        return value is None or (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value) is not None)
    if spec.name == "task":
        return value is None or isinstance(value, str)
    if spec.name in ("max_length", "doc_stride"):
        return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
    if spec.name in ("label_names", "targets"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if spec.name == "metrics":
        return isinstance(value, dict)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True
