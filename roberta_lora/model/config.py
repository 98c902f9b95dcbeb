"""`AdapterConfig`: everything needed to rebuild a LoRA-adapted encoder, stored as adapter_config.json.

Also reads that file (`read_adapter_config`), without torch: `roberta-lora inspect` and argument
checks stay fast. The tensors file is written and read by `model.adapter_files`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta_lora.choices import (
    HEAD_KINDS,
    LORA_INITS,
    LORA_INITS_FROM_BASE,
    METHODS,
    TASK_TYPES,
    has_visible_text,
)
from roberta_lora.errors import AdapterError, ConfigError, first_line
from roberta_lora.fileio import link_out_of, read_safetensors_header, restore_interrupted_replace, strict_json
from roberta_lora.lora.targets import MODEL_TYPES, resolve_targets

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20  # a real config is ~1 kB; refuse to parse anything absurd
ALPHA_KEY = "lora_alpha"  # recorded in the tensors file's safetensors metadata too
RSLORA_KEY = "use_rslora"  # likewise: it changes what the adapter computes, not any tensor shape
FORMAT_VERSION = 1
# Upper bounds, so that a stranger's config cannot make `from_adapter` allocate without limit
# before the tensors are checked: a rank above the hidden size (768 / 1024) adds nothing, and a
# GLUE-style head with more classes than this is not what the toolkit is for.
MAX_LORA_RANK = 1024
MAX_NUM_CLASSES = 10_000
# Keys every adapter_config.json the toolkit has written since FORMAT_VERSION 1 holds: what the adapter computes
# and how its outputs are named. A file without one of them was cut or hand-written, and filling the gap with a
# default would quietly build another model (a `{}` config is a rank-8 SST-2-shaped adapter). `model_type` and
# `method` came later in format 1: their absence means what it meant before they existed ("roberta", "lora").
# The informational keys (base_model, base_fingerprint, task, metrics, package_version) may be absent too.
REQUIRED_KEYS = (
    "task_type", "num_classes", "label_names", "lora_rank", "lora_alpha", "lora_dropout", "targets", "train_biases",
    "train_layer_norms", "train_embeddings", "head", "head_dropout", "format_version",
)
# Bytes per element of each safetensors dtype, to check that a header's offsets match its shapes.
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass
class AdapterConfig:
    """How an adapter was built. Field by field:

    task_type: "glue" (classification / regression head) or "squad_v1" / "squad_v2" (span head).
    num_classes: GLUE classes; 1 means regression (STS-B). Always 2 (start, end) for SQuAD.
    label_names: names of the classes in index order (empty for regression and SQuAD).
    lora_rank: r of every LoRA layer. lora_alpha: the update is scaled by lora_alpha / lora_rank.
    lora_dropout: dropout on the LoRA branch input during training.
    targets: adapted projections, by short names that mean the same in every family (see
        lora.targets.LAYOUTS); default query and value.
    train_biases / train_layer_norms / train_embeddings: base tensors also trained and saved.
    head: "light" or "roberta" (GLUE only). head_dropout: dropout inside the head.
    base_model: the hub id or path the base was loaded from (informational; may be overridden).
    model_type: the base's family (transformers' config.model_type: "roberta", "xlm-roberta", "camembert",
        "bert" or "distilbert"); an adapter loads only on a base of its family. Files written before
        this field existed are RoBERTa adapters, hence the default.
    base_fingerprint: hash of base weights the adapter was trained on; loading checks it.
    task: the task name (e.g. "sst2") when trained by the toolkit. metrics: validation results.
    method: "lora" (default); "head" (only the head trains, no LoRA); "full" (every parameter trains,
        so the "adapter" holds the whole model): the baselines the tutorials compare LoRA with.
    max_length / doc_stride: tokenization used in training (None: the task's default), reused by
        `evaluate` and `predict` so they see inputs exactly as training did.
    use_rslora: scale the update by lora_alpha / sqrt(lora_rank) (rsLoRA) instead of lora_alpha / lora_rank.
    use_dora: DoRA (weight-decomposed LoRA: a trained magnitude per output feature; `lora.variants`).
    init_lora_weights: how the factors started, a name from `choices.LORA_INITS`; "pissa" or "olora" start from
        the base weight (the file then holds the equivalent rank-2r update for the unmodified base). Read only when
        training starts; informational in a saved adapter.
    layers_to_transform: the layer indexes that carry LoRA (None: every layer), PEFT's name.
    max_eval_samples: `metrics` were computed on the first N rows of each validation split (None: on the
        whole split); cards and `evaluate` say so.
    PEFT's names throughout, so a PEFT user reads the file as their own.
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
    model_type: str = "roberta"
    base_fingerprint: str | None = None
    task: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    method: str = "lora"
    max_length: int | None = None
    doc_stride: int | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: str = "kaiming"
    layers_to_transform: list[int] | None = None
    max_eval_samples: int | None = None
    package_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def variant(self) -> str:
        """The `lora.variants` name of what the adapter computes ("lora" or "dora")."""
        return "dora" if self.use_dora else "lora"

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
        problems += _label_name_problems(self.label_names)
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
        if self.model_type not in MODEL_TYPES:
            problems.append(f"model_type={self.model_type!r} (expected one of {list(MODEL_TYPES)})")
        if self.head not in HEAD_KINDS:
            problems.append(f"head={self.head!r} (expected one of {list(HEAD_KINDS)})")
        try:
            resolve_targets(self.targets)
        except ConfigError as error:
            problems.append(f"targets={self.targets!r:.200} ({error})")
        if self.init_lora_weights not in LORA_INITS:
            problems.append(f"init_lora_weights={self.init_lora_weights!r} (expected one of {list(LORA_INITS)})")
        problems += _layers_problems(self.layers_to_transform)
        if self.init_lora_weights in LORA_INITS_FROM_BASE and self.use_dora:
            problems.append(f"init_lora_weights={self.init_lora_weights!r} with use_dora (not supported together; use "
                            "it with plain LoRA)")
        if self.method != "lora" and (self.use_dora or self.use_rslora or self.layers_to_transform is not None):
            problems.append(f"use_dora / use_rslora / layers_to_transform apply to LoRA, not method={self.method!r}")
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
        wrong = [f"{name}={data[name]!r}" for name in data if not _type_ok(data[name], known[name].default, known[name])]
        missing = [name for name in REQUIRED_KEYS if name not in data]
        problems = [f"wrong value types: {', '.join(wrong)}"] if wrong else []
        if missing:
            problems.append(
                f"missing keys {missing}: every adapter_config.json roberta-lora writes holds them, so this one was cut "
                "short or written by hand, and defaults would silently build a different model; restore them from "
                "the original file or re-save the adapter"
            )
        if not wrong:  # values of the right types: report what validation finds too, all at once
            try:
                cls(**data).validate()
            except ConfigError as error:
                problems.append(str(error))
        if problems:
            raise AdapterError(f"{source}: " + "; ".join(problems))
        return cls(**data)


def _label_name_problems(names: Any) -> list[str]:
    """Label names must be distinct texts with something in them: a repeated name would merge two classes into
    one key of every score and prediction (one class vanishes), an empty one cannot be read or asked for."""
    if not isinstance(names, (list, tuple)):
        return [f"label_names={names!r:.200} (expected a list of class names)"]
    problems = []
    invisible = [name for name in names if not isinstance(name, str) or not has_visible_text(name)]
    if invisible:
        problems.append(f"label_names={list(names)!r:.200} holds {invisible!r:.100}, which is not a name (expected "
                        "texts with a visible character, e.g. [\"negative\", \"positive\"])")
    counts = Counter(name for name in names if isinstance(name, str))
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        problems.append(f"label_names={list(names)!r:.200} repeats {repeated!r:.100} (expected one distinct name per "
                        "class: a repeated name merges two classes in every score and prediction)")
    return problems


def _layers_problems(layers: Any) -> list[str]:
    if layers is None:
        return []
    ints = isinstance(layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    if not ints or not layers or any(i < 0 for i in layers) or len(set(layers)) != len(layers):
        return [f"layers_to_transform={layers!r:.200} (expected a non-empty list of distinct layer indexes >= 0, "
                "e.g. [8, 9, 10, 11], or None for every layer)"]
    return []


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _could_be_a_path(value: str) -> bool:
    """A hub id or a local path: no NUL byte, at most 4096 characters, each part at most 255."""
    return "\0" not in value and 0 < len(value) <= 4096 and all(len(part) <= 255 for part in re.split(r"[/\\]", value))


def _type_ok(value: Any, default: Any, spec: dataclasses.Field) -> bool:
    """A small structural type check for JSON-decoded values (no pickle, no eval)."""
    if spec.name == "base_model":  # `from_adapter` opens it: it must be something a path or a hub id can be
        return value is None or (isinstance(value, str) and _could_be_a_path(value))
    if spec.name == "base_fingerprint":  # as adapter_files.base_fingerprint writes it; "" would skip the check
        # "v2-" and 16 hex digits; 16 hex digits alone is the fingerprint 0.1 wrote, still accepted
        return value is None or (isinstance(value, str) and re.fullmatch(r"(v2-)?[0-9a-f]{16}", value) is not None)
    if spec.name == "task":
        return value is None or isinstance(value, str)
    if spec.name in ("max_length", "doc_stride", "max_eval_samples"):
        return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
    if spec.name == "layers_to_transform":
        return value is None or (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value))
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


def head_attribute(task_type: str) -> str:
    """The model attribute (and tensor-name prefix) of a task type's head: "classifier" for GLUE,
    "qa_outputs" for SQuAD, as in transformers' RobertaFor* classes. The one place this is decided."""
    return "classifier" if task_type == "glue" else "qa_outputs"


def read_adapter_config(directory: str | Path) -> tuple[AdapterConfig, str | None]:
    """Parse adapter_config.json; returns the config and the recorded sha256 of the tensors file.

    Raises AdapterError (naming the file) for a missing folder or file, invalid JSON, unknown keys,
    wrong types, or a lora_alpha that differs from the one recorded in the tensors file.
    """
    directory = Path(directory)
    restore_interrupted_replace(directory)  # a save killed between its two renames (see fileio)
    path = directory / CONFIG_NAME
    if os.path.isfile(directory):
        raise AdapterError(f"{directory} is a file, not an adapter folder; pass the folder that holds {CONFIG_NAME}")
    if not os.path.isdir(directory):
        raise AdapterError(f"adapter directory {directory} does not exist; pass the folder that holds {CONFIG_NAME}")
    if not path.is_file():
        present = sorted(p.name for p in directory.iterdir())[:10]
        raise AdapterError(f"{path} is missing (found {present}); an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    refuse_links_out(directory)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {path.stat().st_size} bytes; a valid adapter config is a few kB")
    try:
        data = strict_json(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise AdapterError(f"{path} is not valid UTF-8 JSON ({error}); re-download or re-save the adapter") from None
    digest = data.pop("weights_sha256", None) if isinstance(data, dict) else None
    if digest is not None and not isinstance(digest, str):
        raise AdapterError(f"{path}: weights_sha256 must be a string, got {type(digest).__name__}")
    config = AdapterConfig.from_dict(data, source=str(path))
    _check_recorded_alpha(config, directory / WEIGHTS_NAME, path)
    return config, digest


def refuse_links_out(directory: str | Path) -> None:
    """Raise AdapterError when the config or tensors file is a symbolic link out of the adapter folder: an
    adapter is its folder, and a link would make it load (and re-save) another folder's file."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        target = link_out_of(directory, name)
        if target is not None:
            raise AdapterError(
                f"{Path(directory) / name} is a symbolic link to {target}, outside the adapter folder; an adapter's "
                "files must be inside its folder: copy the file in place of the link"
            )


def config_json_with_digest(config: AdapterConfig, digest: str) -> str:
    """adapter_config.json's text: the config plus the sha256 of the tensors file it vouches for."""
    data = json.loads(config.to_json())
    return json.dumps({**data, "weights_sha256": digest}, indent=2, sort_keys=True) + "\n"


def _check_recorded_alpha(config: AdapterConfig, weights: Path, config_path: Path) -> None:
    """Refuse a config whose lora_alpha differs from the one recorded in the tensors file's header.

    Files without the record (older saves, other tools) are not checked; a broken tensors file
    is left for `adapter_files.read_adapter_tensors` to report.
    """
    if not weights.is_file():  # absent, or a FIFO / device that open() would block on or read forever
        return
    try:
        metadata = read_safetensors_header(weights)["__metadata__"]
        recorded = float(metadata[ALPHA_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return
    rslora = metadata.get(RSLORA_KEY) if isinstance(metadata, dict) else None
    if rslora in ("true", "false") and (rslora == "true") != bool(config.use_rslora):
        raise AdapterError(
            f"{config_path} says use_rslora={config.use_rslora!r} but {weights.name} was saved with "
            f"use_rslora={rslora == 'true'}: the config was edited or corrupted (it changes the update's scale). "
            f"Restore use_rslora={rslora == 'true'} or re-download the adapter"
        )
    if math.isfinite(recorded) and recorded != float(config.lora_alpha):
        raise AdapterError(
            f"{config_path} says lora_alpha={config.lora_alpha!r} but {weights.name} was saved with "
            f"lora_alpha={recorded!r}: the config was edited or corrupted (lora_alpha scales every LoRA update). "
            f"Restore lora_alpha={recorded!r} or re-download the adapter"
        )


def read_weights_header(directory: str | Path) -> dict[str, Any]:
    """The checked safetensors header of an adapter folder's tensors file, read without torch (for `inspect`).

    Checks what can be checked without reading the tensors: the header parses (`fileio.read_safetensors_header`),
    its metadata maps strings to strings, and every tensor has a known dtype, a shape of non-negative integers
    and data offsets inside the file whose length matches the shape. The values themselves (NaN, sha256) are
    `adapter_files.read_adapter_tensors`' to check when the adapter is loaded.

    Raises:
        AdapterError: naming the file and the first problems found.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():  # absent, a folder, or a FIFO / device that open() would block on
        raise AdapterError(f"{path} is missing or not a file; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    refuse_links_out(directory)
    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError) as error:
        raise AdapterError(f"{path} is not a valid safetensors file ({first_line(error, 200)}); re-download or "
                           "re-save the adapter") from None
    with open(path, "rb") as handle:  # the tensors' bytes follow the 8-byte length and the header
        data_size = path.stat().st_size - 8 - struct.unpack("<Q", handle.read(8))[0]
    problems = _header_problems(header, data_size)
    if problems:
        raise AdapterError(f"{path} is not a valid safetensors file: the header's " + "; ".join(problems[:3])
                           + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                           + "; re-download or re-save the adapter")
    return header


def _header_problems(header: dict[str, Any], data_size: int) -> list[str]:
    """What is wrong with a parsed safetensors header followed by `data_size` bytes of tensor data."""
    problems = []
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        problems.append(f"__metadata__ is {metadata!r:.80} (expected an object of strings)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r:.80}"
        if not isinstance(info, dict):
            problems.append(f"{where} is {info!r:.80} (expected {{dtype, shape, data_offsets}})")
            continue
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            problems.append(f"{where} has dtype {dtype!r:.40} (expected one of {sorted(SAFETENSORS_DTYPE_BYTES)})")
        elif not isinstance(shape, list) or not all(_int_in(d, 0, 2**63) for d in shape):
            problems.append(f"{where} has shape {shape!r:.80} (expected a list of non-negative sizes)")
        elif (not isinstance(offsets, list) or len(offsets) != 2 or not all(_int_in(o, 0, data_size) for o in offsets)
              or offsets[0] > offsets[1]):
            problems.append(f"{where} has data_offsets {offsets!r:.80} (expected [begin, end] within the "
                            f"{data_size} bytes of tensor data)")
        elif offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]:
            problems.append(f"{where} spans {offsets[1] - offsets[0]} bytes but its shape {shape} of {dtype} needs "
                            f"{math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]}")
    return problems


def adapter_parameter_count(directory: str | Path) -> int:
    """How many numbers an adapter holds (= what trained), read from its tensors file's (checked) header."""
    header = read_weights_header(directory)
    return sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")


def adapter_size_bytes(directory: str | Path) -> int:
    """Size on disk of an adapter folder's tensor and config files."""
    directory = Path(directory)
    sizes = [directory / name for name in (WEIGHTS_NAME, CONFIG_NAME)]
    missing = [str(p) for p in sizes if not p.is_file()]
    if missing:
        raise AdapterError(f"not an adapter folder, missing {missing}")
    return sum(p.stat().st_size for p in sizes)
