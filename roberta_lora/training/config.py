"""`TrainConfig`: every setting of one training run, resolved and validated once.

Precedence, lowest first: the field defaults below < the task file's [recipe] < `--config FILE`
< explicit CLI flags / keyword arguments. The resolved config is written next to the run's
outputs (config.json), so a run can always be explained and repeated.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.choices import (
    ATTN_IMPLEMENTATIONS,
    COMPILE_BACKENDS,
    HEAD_KINDS,
    METHODS,
    MIXED_PRECISION,
    OPTIMIZERS,
    QUANTIZE,
)
from roberta_lora.data.tasks import Recipe, TaskSpec
from roberta_lora.errors import ConfigError
from roberta_lora.lora.targets import resolve_targets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



@dataclass
class TrainConfig:
    """One training run. Recipe fields (rank ... seed) default to the task file's recipe."""

    task: str = "sst2"  # task name (tasks/<name>.toml) or a path to a task TOML
    model: str = "roberta-base"  # hub id or local checkpoint directory
    data_dir: str | None = None  # local data root (GLUE layout / squad JSON); None = the hub
    output_dir: str | None = None  # the run directory; default outputs/<task>/<timestamp>-<method>
    method: str = "lora"  # lora | head (only the head trains) | full (every parameter trains)
    # --- recipe: the defaults are Recipe's (tasks.py); a run takes them from its task file ---
    lora_rank: int = Recipe.lora_rank
    lora_alpha: float = Recipe.lora_alpha
    lora_dropout: float = Recipe.lora_dropout
    batch_size: int = Recipe.batch_size
    learning_rate: float = Recipe.learning_rate
    epochs: int = Recipe.epochs
    warmup_ratio: float = Recipe.warmup_ratio  # linear warm-up over this share of all steps, then decay to 0
    weight_decay: float = Recipe.weight_decay
    head: str = Recipe.head
    seed: int = Recipe.seed
    # --- model ---
    targets: str = "query,value"  # query,value | all-linear | comma list of query,key,value,...
    head_dropout: float = 0.1
    train_biases: bool = True
    train_layer_norms: bool = True
    train_embeddings: bool = False
    attn_implementation: str | None = None  # sdpa | eager; None = the checkpoint's default
    # --- loop ---
    grad_accum: int = 1  # gradient accumulation steps (effective batch = batch_size * grad_accum * processes)
    eval_batch_size: int = 64
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    max_length: int | None = None  # tokens per example; None = the task's max_length
    doc_stride: int | None = None  # SQuAD window overlap; None = the task's
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule spans them)
    max_train_samples: int | None = None  # use the first N training examples
    max_eval_samples: int | None = None  # evaluate on the first N examples of each validation split
    mixed_precision: str = "no"  # no | fp16 (CUDA) | bf16
    group_by_length: bool = True  # batches of similar length: less padding, same examples per epoch
    num_workers: int = 0  # DataLoader worker processes
    init_from: str | None = None  # warm-start from another adapter (head re-initialised if labels differ)
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    allow_base_mismatch: bool = False  # let --init-from use an adapter trained on another base
    null_score_diff_threshold: float = 0.0  # SQuAD v2: predict "" when null - best span > this
    quantize: str = "none"  # none | 4bit | 8bit (bitsandbytes, CUDA only)
    optim: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit (bitsandbytes, CUDA only)
    cache_dir: str | None = None  # tokenized-data cache; None = ~/.cache/roberta_lora
    torch_compile: bool = False  # torch.compile the model (pays off on GPU; the first steps compile)
    torch_compile_backend: str = "inductor"  # inductor | aot_eager | eager (the last two: for debugging)

    def validate(self) -> None:
        """Raise one ConfigError listing every invalid setting."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.method in METHODS, f"method={self.method!r}: expected one of {list(METHODS)}")
        need(self.head in HEAD_KINDS, f"head={self.head!r}: expected one of {list(HEAD_KINDS)}")
        need(self.mixed_precision in MIXED_PRECISION, f"mixed_precision={self.mixed_precision!r}: expected {list(MIXED_PRECISION)}")
        need(self.quantize in QUANTIZE, f"quantize={self.quantize!r}: expected one of {list(QUANTIZE)}")
        need(self.optim in OPTIMIZERS, f"optim={self.optim!r}: expected one of {list(OPTIMIZERS)}")
        need(self.torch_compile_backend in COMPILE_BACKENDS,
             f"torch_compile_backend={self.torch_compile_backend!r}: expected one of {list(COMPILE_BACKENDS)}")
        for name in ("lora_rank", "batch_size", "epochs", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name}={value!r}: expected an integer >= 1")
        for name in ("max_length", "doc_stride", "max_steps", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value >= 1), f"{name}={value!r}: expected an integer >= 1")
        need(self.learning_rate > 0, f"learning_rate={self.learning_rate!r}: expected > 0 (e.g. 5e-4)")
        need(0.0 <= self.warmup_ratio <= 1.0, f"warmup_ratio={self.warmup_ratio!r}: expected a share in [0, 1]")
        need(self.lora_alpha > 0, f"lora_alpha={self.lora_alpha!r}: expected > 0")
        need(0.0 <= self.lora_dropout < 1.0, f"lora_dropout={self.lora_dropout!r}: expected [0, 1)")
        need(0.0 <= self.head_dropout < 1.0, f"head_dropout={self.head_dropout!r}: expected [0, 1)")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay!r}: expected >= 0")
        need(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm!r}: expected >= 0 (0 disables clipping)")
        need(self.num_workers >= 0, f"num_workers={self.num_workers!r}: expected >= 0")
        need(self.attn_implementation in (None, *ATTN_IMPLEMENTATIONS), f"attn_implementation={self.attn_implementation!r}: expected sdpa or eager")
        if self.init_from is not None and not Path(self.init_from).is_dir():
            problems.append(f"init_from={self.init_from!r}: no such adapter folder")
        if self.data_dir is not None and not Path(self.data_dir).exists():
            problems.append(f"data_dir={self.data_dir!r}: no such file or folder")
        if self.resume and self.output_dir is None:
            problems.append("resume needs the run folder: pass --output-dir outputs/<task>/<run>")
        try:
            resolve_targets(self.targets)
        except ConfigError as error:
            problems.append(str(error))
        if problems:
            raise ConfigError("invalid training configuration:\n  " + "\n  ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a `--config FILE` TOML: any TrainConfig field, top level or in a [recipe] table."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file to --config")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML ({error})") from None
    recipe = raw.pop("recipe", {})
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: 'recipe' must be a table, got {recipe!r}")
    values = {**recipe, **raw}
    unknown = sorted(set(values) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; allowed: {sorted(CONFIG_FIELDS)}")
    return values


def resolve_train_config(spec: TaskSpec, overrides: dict[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < task recipe < config file < overrides (None values in `overrides` mean "not given")."""
    values: dict[str, Any] = {name: getattr(spec.recipe, name) for name in RECIPE_FIELDS if name in CONFIG_FIELDS}
    if config_file is not None:
        values.update(read_config_file(config_file))
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; allowed: {sorted(CONFIG_FIELDS)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["task"] = overrides.get("task") or spec.name
    try:
        config = TrainConfig(**values)
    except TypeError as error:  # pragma: no cover - guarded by the unknown-key checks above
        raise ConfigError(str(error)) from None
    if isinstance(config.targets, (list, tuple)):
        config.targets = ",".join(config.targets)
    config.validate()
    return config
