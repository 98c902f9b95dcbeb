"""`TrainConfig`: every setting of one training run, resolved and validated once.

Precedence, lowest first: the field defaults below < the task file's [recipe] < `--config FILE`
< explicit CLI flags / keyword arguments. The resolved config is written next to the run's
outputs (config.json), so a run can always be explained and repeated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.choices import (
    ATTN_IMPLEMENTATIONS,
    COMPILE_BACKENDS,
    HEAD_KINDS,
    LORA_INIT_RANK_STEP,
    LORA_INITS,
    LORA_INITS_FROM_BASE,
    METHODS,
    MIXED_PRECISION,
    OPTIMIZERS,
    QUANTIZE,
    TRACKERS,
)
from roberta_lora.data.recipes import DEFAULT_RECIPE, TUTORIAL_RECIPE, load_recipe
from roberta_lora.data.tasks import Recipe, TaskSpec
from roberta_lora.errors import ConfigError
from roberta_lora.lora.targets import resolve_targets
from roberta_lora.model.config import MAX_LORA_RANK

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training run. Recipe fields (rank ... seed) default to the task file's recipe."""

    task: str = "sst2"  # task name (tasks/<name>.toml) or a path to a task TOML
    # The recipe the settings came from: "tutorial" (the task file's own [recipe]: these field defaults) or a
    # named recipe (recipes/<name>.toml) or its path. Only a label here: `TrainConfig.from_recipe` and
    # `resolve_train_config` (what `train` uses; default recipe: recipes/pissa.toml) apply a recipe.
    recipe: str = TUTORIAL_RECIPE
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
    # --- LoRA variants (PEFT's names; lora/variants.py) ---
    use_rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # DoRA: a trained magnitude per output feature
    init_lora_weights: str = "kaiming"  # a name from choices.LORA_INITS (pissa / olora: from the base weight)
    layers_to_transform: str | None = None  # comma list of layer indexes that get LoRA ("8,9,10,11"); None = all
    loraplus_lr_ratio: float | None = None  # LoRA+: B's learning rate = this x the learning rate (None: the same)
    # --- loop ---
    grad_accum: int = 1  # gradient accumulation steps (effective batch = batch_size * grad_accum * processes)
    eval_batch_size: int = 64
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    max_length: int | None = None  # tokens per example; None = the task's max_length
    doc_stride: int | None = None  # SQuAD window overlap; None = the task's
    max_steps: int | None = None  # train for exactly this many optimizer steps (overrides epochs; the schedule spans them)
    eval_steps: int | None = None  # evaluate every N optimizer steps (None: at the end of each epoch)
    save_steps: int | None = None  # checkpoint every N optimizer steps (None: after each evaluation)
    logging_steps: int | None = None  # log the mean loss and learning rate every N steps (None: trackers every step)
    save_total_limit: int | None = None  # checkpoints kept: the latest in checkpoint/, older ones as checkpoint-<step>/
    metric_for_best: str | None = None  # the validation metric that picks best/ (None: the task's main metric)
    early_stopping_patience: int | None = None  # stop after N evaluations without a better metric_for_best
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower steps
    max_train_samples: int | None = None  # use the first N training examples
    max_eval_samples: int | None = None  # evaluate on the first N examples of each validation split
    mixed_precision: str = "no"  # no | fp16 (CUDA) | bf16
    group_by_length: bool = True  # batches of similar length: less padding, same examples per epoch
    num_workers: int = 0  # DataLoader worker processes
    init_from: str | None = None  # warm-start from another adapter (head re-initialised if labels differ)
    resume: bool = False  # continue the run in output_dir from its last checkpoint, with its saved settings
    overwrite: bool = False  # start again in an existing run folder (its files are deleted)
    allow_base_mismatch: bool = False  # let --init-from use an adapter trained on another base
    null_score_diff_threshold: float = 0.0  # SQuAD v2: predict "" when null - best span > this
    quantize: str = "none"  # none | 4bit | 8bit (bitsandbytes, CUDA only)
    optim: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit (bitsandbytes, CUDA only)
    cache_dir: str | None = None  # tokenized-data cache; None = ~/.cache/roberta_lora
    torch_compile: bool = False  # torch.compile the model (pays off on GPU; the first steps compile)
    torch_compile_backend: str = "inductor"  # inductor | aot_eager | eager (the last two: for debugging)
    report_to: str = "none"  # an experiment tracker accelerate supports: tensorboard, wandb, mlflow, ... (none)

    def validate(self) -> None:
        """Raise one ConfigError listing every invalid setting (wrong types first: `"5e-4"`, `true`)."""
        problems = _type_problems(self)
        if problems:
            raise ConfigError("invalid training configuration:\n  " + "\n  ".join(problems))

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.method in METHODS, f"method={self.method!r}: expected one of {list(METHODS)}")
        need(self.head in HEAD_KINDS, f"head={self.head!r}: expected one of {list(HEAD_KINDS)}")
        need(self.mixed_precision in MIXED_PRECISION, f"mixed_precision={self.mixed_precision!r}: expected {list(MIXED_PRECISION)}")
        need(self.quantize in QUANTIZE, f"quantize={self.quantize!r}: expected one of {list(QUANTIZE)}")
        need(self.optim in OPTIMIZERS, f"optim={self.optim!r}: expected one of {list(OPTIMIZERS)}")
        need(self.report_to in TRACKERS, f"report_to={self.report_to!r}: expected one of {list(TRACKERS)}")
        need(self.torch_compile_backend in COMPILE_BACKENDS,
             f"torch_compile_backend={self.torch_compile_backend!r}: expected one of {list(COMPILE_BACKENDS)}")
        for name in ("lora_rank", "batch_size", "epochs", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name}={value!r}: expected an integer >= 1")
        need(not isinstance(self.lora_rank, int) or self.lora_rank <= MAX_LORA_RANK,
             f"lora_rank={_short(self.lora_rank)}: expected at most {MAX_LORA_RANK} (--rank)")
        for name in ("max_length", "doc_stride", "max_steps", "max_train_samples", "max_eval_samples", "eval_steps",
                     "save_steps", "logging_steps", "save_total_limit", "early_stopping_patience"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value >= 1), f"{name}={value!r}: expected an integer >= 1")
        need(self.max_length is None or self.max_length >= MIN_MAX_LENGTH,
             f"max_length={self.max_length!r}: expected at least {MIN_MAX_LENGTH} tokens (the special tokens of a "
             "pair alone take 4)")
        need(self.learning_rate > 0, f"learning_rate={self.learning_rate!r}: expected > 0 (e.g. 5e-4)")
        need(0.0 <= self.warmup_ratio <= 1.0, f"warmup_ratio={self.warmup_ratio!r}: expected a share in [0, 1]")
        need(self.lora_alpha > 0, f"lora_alpha={self.lora_alpha!r}: expected > 0")
        need(0.0 <= self.lora_dropout < 1.0, f"lora_dropout={self.lora_dropout!r}: expected [0, 1)")
        need(0.0 <= self.head_dropout < 1.0, f"head_dropout={self.head_dropout!r}: expected [0, 1)")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay!r}: expected >= 0")
        need(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm!r}: expected >= 0 (0 disables clipping)")
        need(self.num_workers >= 0, f"num_workers={self.num_workers!r}: expected >= 0")
        need(self.attn_implementation in (None, *ATTN_IMPLEMENTATIONS), f"attn_implementation={self.attn_implementation!r}: expected sdpa or eager")
        # numpy's legacy seeding (used by accelerate's set_seed) takes 0 .. 2**32 - 1.
        need(0 <= self.seed < 2**32, f"seed={self.seed!r}: expected an integer in [0, 2**32)")
        need(self.output_dir is None or self.output_dir.strip() != "",
             "output_dir is empty: pass a folder name, or leave --output-dir out for outputs/<task>/<time>-<method>")
        need(self.metric_for_best is None or self.metric_for_best.strip() != "",
             "metric_for_best is empty: name a metric the task reports (e.g. accuracy, f1), or leave it out")
        need(not (self.resume and self.overwrite), "resume and overwrite together: --resume continues a run, "
             "--overwrite starts it again; pass one of them")
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
        need(self.init_lora_weights in LORA_INITS,
             f"init_lora_weights={self.init_lora_weights!r}: expected one of {list(LORA_INITS)}")
        step = LORA_INIT_RANK_STEP.get(self.init_lora_weights, 1)
        need(not isinstance(self.lora_rank, int) or self.lora_rank % step == 0,
             f"init_lora_weights={self.init_lora_weights!r} needs a rank that is a multiple of {step}, got "
             f"--rank {self.lora_rank}; pass e.g. --rank {max(step, self.lora_rank - self.lora_rank % step)}")
        try:
            self.layer_indexes()
        except ConfigError as error:
            problems.append(str(error))
        need(self.loraplus_lr_ratio is None or self.loraplus_lr_ratio > 0,
             f"loraplus_lr_ratio={self.loraplus_lr_ratio!r}: expected a number > 0 (the LoRA+ paper uses 16)")
        if self.method != "lora":
            used = [flag_of(n) for n in ("use_rslora", "use_dora", "layers_to_transform", "loraplus_lr_ratio")
                    if getattr(self, n) not in (None, False)]
            used += [f"--init-lora-weights {self.init_lora_weights}"] if self.init_lora_weights != "kaiming" else []
            need(not used, f"{', '.join(used)} shape LoRA, but method={self.method!r} has none; drop them or use "
                 "--method lora")
        need(not (self.init_lora_weights in LORA_INITS_FROM_BASE and (self.use_dora or self.quantize != "none")),
             f"init_lora_weights={self.init_lora_weights!r} starts from the base weight: not with --use-dora or "
             "--quantize; use kaiming or gaussian there")
        need(not (self.use_dora and self.quantize != "none"),
             f"use_dora with quantize={self.quantize!r}: DoRA reads the base weight, which a quantized base holds "
             "in 4/8 bits; use plain LoRA with --quantize, or drop --quantize")
        if problems:
            raise ConfigError("invalid training configuration:\n  " + "\n  ".join(problems))

    def layer_indexes(self) -> list[int] | None:
        """`layers_to_transform` as a list of indexes (None: every layer); ConfigError naming the bad text."""
        if self.layers_to_transform is None:
            return None
        parts = [part.strip() for part in self.layers_to_transform.split(",")]
        if not parts or not all(part.isascii() and part.isdigit() for part in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"layers_to_transform={self.layers_to_transform!r:.80}: expected distinct layer "
                              "indexes >= 0 separated by commas, e.g. 8,9,10,11")
        return [int(part) for part in parts]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_recipe(cls, task: str, recipe: str | None = None, config_file: str | Path | None = None,
                    **settings: Any) -> TrainConfig:
        """The configuration `roberta-lora train --task TASK` builds: the task file's recipe < the named
        recipe (`DEFAULT_RECIPE` unless given; "tutorial" for the task file's own) < `config_file` <
        `settings` (TrainConfig field names). Raises ConfigError for unknown names or bad values."""
        from roberta_lora.data.tasks import load_task

        return resolve_train_config(load_task(task), {**settings, "task": task, "recipe": recipe}, config_file)


def _type_problems(config: TrainConfig) -> list[str]:
    """One message per field whose value has the wrong type for its annotation (TOML and Python callers
    can pass anything: `learning_rate = "5e-4"`, `epochs = true`, `lora_rank = 2.5`)."""
    problems = []
    for spec in dataclasses.fields(config):
        value, annotation = getattr(config, spec.name), str(spec.type)
        if value is None and "None" in annotation:
            continue
        if "bool" in annotation:
            ok = isinstance(value, bool)
        elif annotation.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif annotation.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif annotation.startswith("str"):
            ok = isinstance(value, str)
        else:  # pragma: no cover - every field is one of the above
            ok = True
        if not ok:
            kind = annotation.replace(" | None", " or none")
            problems.append(f"{spec.name}={_short(value)} is a {type(value).__name__}; expected {kind}")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


MIN_MAX_LENGTH = 8

# Fields whose CLI flag is not "--" + the field name with dashes.
FIELD_FLAGS = {"lora_rank": "--rank", "lora_alpha": "--alpha", "lora_dropout": "--dropout", "learning_rate": "--lr"}


def flag_of(field_name: str) -> str:
    """The CLI flag of a TrainConfig field ("learning_rate" -> "--lr")."""
    return FIELD_FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


# Settings a resumed run may change: they cannot change its results.
RESUME_FREE_FIELDS = ("output_dir", "resume", "overwrite", "num_workers", "cache_dir", "report_to", "save_steps",
                      "logging_steps", "save_total_limit")


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was started with (its config.json), for `--resume`.

    Raises ConfigError when the folder holds no readable run configuration.
    """
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"cannot --resume {run_dir}: it has no config.json, so it is not a roberta-lora run "
                          "(check --output-dir)") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot --resume {run_dir}: {path} is unreadable ({error})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"cannot --resume {run_dir}: {path} is not a JSON object")
    saved.pop("resolved", None)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except TypeError as error:
        raise ConfigError(f"cannot --resume {run_dir}: {path} does not describe a run ({error})") from None


def resume_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The settings in which `wanted` differs from the run on disk (free ones left out)."""
    return [f"{name} ({flag_of(name)}): the run has {_short(getattr(saved, name))}, now {_short(getattr(wanted, name))}"
            for name in CONFIG_FIELDS
            if name not in RESUME_FREE_FIELDS and getattr(saved, name) != getattr(wanted, name)]


def resume_train_config(run_dir: str | Path, overrides: dict[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """`--resume --output-dir RUN`: the run's saved settings, with the flags actually given on top (the
    training then refuses any that would change the run, listing them)."""
    values = dataclasses.asdict(read_run_config(run_dir))
    if config_file is not None:
        values.update(read_config_file(config_file))
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; allowed: {sorted(CONFIG_FIELDS)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(output_dir=str(run_dir), resume=True)
    config = TrainConfig(**values)
    config.validate()
    return config


def _recipe_start_yields(values: dict[str, Any]) -> None:
    """A recipe's PiSSA / OLoRA start gives way to a setting given with it that cannot use one (DoRA, a
    quantized base, a warm start, no LoRA): Kaiming instead, said in a warning. Asked for explicitly
    (--init-lora-weights, --config), the same pair is an error, as it is in the Python API."""
    init = values.get("init_lora_weights")
    if init not in LORA_INITS_FROM_BASE:
        return
    clashes = [flag for flag, on in (("--use-dora", values.get("use_dora") is True),
                                     ("--quantize", values.get("quantize") not in (None, "none")),
                                     ("--init-from", bool(values.get("init_from"))),
                                     (f"--method {values.get('method')}", values.get("method", "lora") != "lora")) if on]
    if clashes:
        logger.warning("the %s recipe starts LoRA from the base weight (init_lora_weights=%r), which %s cannot use; "
                       "this run starts it as kaiming (choose with --init-lora-weights)", values["recipe"], init,
                       " and ".join(clashes))
        values["init_lora_weights"] = "kaiming"


def absolute_local_paths(config: TrainConfig) -> None:
    """Store local paths absolute (model, data, warm start), so adapters and resumes work from any folder."""
    for name in ("model", "data_dir", "init_from"):
        value = getattr(config, name)
        if isinstance(value, str) and value and Path(value).exists():
            setattr(config, name, str(Path(value).resolve()))


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a `--config FILE` TOML: any TrainConfig field, top level or in a [recipe] table."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; pass a TOML file")
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
    """Defaults < the task file's [recipe] < a named recipe (`recipe` in the overrides or the config file)
    < config file < overrides (None values in `overrides` mean "not given")."""
    values: dict[str, Any] = {name: getattr(spec.recipe, name) for name in RECIPE_FIELDS if name in CONFIG_FIELDS}
    from_file = read_config_file(config_file) if config_file is not None else {}
    recipe_name = overrides.get("recipe") or from_file.get("recipe") or DEFAULT_RECIPE
    recipe = load_recipe(recipe_name)
    from_recipe = recipe.for_task(spec.name) if recipe is not None else {}
    values.update(from_recipe)
    values.update(from_file)
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; allowed: {sorted(CONFIG_FIELDS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    values["task"] = overrides.get("task") or spec.name
    values["recipe"] = recipe.name if recipe is not None else TUTORIAL_RECIPE
    if "init_lora_weights" in from_recipe and "init_lora_weights" not in {**from_file, **given}:
        _recipe_start_yields(values)
    try:
        config = TrainConfig(**values)
    except TypeError as error:  # pragma: no cover - guarded by the unknown-key checks above
        raise ConfigError(str(error)) from None
    if isinstance(config.targets, (list, tuple)):
        config.targets = ",".join(config.targets)
    config.validate()
    absolute_local_paths(config)
    return config
