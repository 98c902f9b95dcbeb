"""Task specs: what differs between GLUE/SQuAD/IMDb tasks is data, so it lives in TOML files.

Each `tasks/<name>.toml` names the hub dataset, the local files of the original release,
the text columns, the label names, the metrics and the default training recipe. Every key
is a field of `TaskSpec` (plus a `[local_files]` and a `[recipe]` table), so adding a task
needs no code: write a TOML file and pass its path wherever a task name is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta_lora.choices import GLUE_METRICS, HEAD_KINDS
from roberta_lora.data.glue_files import GLUE_LAYOUTS
from roberta_lora.errors import ConfigError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 installs tomli (see pyproject)
    import tomli as tomllib

TASKS_DIR_ENV = "ROBERTA_LORA_TASKS_DIR"
KINDS = ("classification", "regression", "squad")
LOCAL_FORMATS = ("glue_tsv", "squad", "table")
# SQuAD scores come from squad_metrics (official script names); GLUE ones from metrics.py.
SQUAD_METRICS = {
    1: ("exact_match", "f1"),
    2: ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"),
}
MAX_POSITIONS = 512  # RoBERTa has 514 position embeddings, two reserved for padding offsets.


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters; defaults are the "Implementing LoRA from scratch" recipe."""

    lora_rank: int = 8
    """r: rank of the update B @ A added to each adapted weight."""
    lora_alpha: float = 8.0
    """alpha: the update is scaled by alpha / r (alpha = r gives scale 1)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch input only; the frozen base path is untouched."""
    batch_size: int = 16
    """Examples per optimizer step."""
    learning_rate: float = 5e-4
    """Peak learning rate of AdamW, reached at the end of warm-up."""
    epochs: int = 6
    """Passes over the training split."""
    warmup_ratio: float = 0.3333333333333333
    """Fraction of all steps spent warming up linearly from 0 (2 of 6 epochs), then linear decay to 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    head: str = "light"
    """Classification head kind, one of choices.HEAD_KINDS ("light" or "roberta")."""
    seed: int = 42
    """Seed for model init, dropout and data order."""


def _recipe_problems(values: Mapping[str, Any], where: str) -> list[str]:
    """Type- and range-check recipe values; return one message per problem."""
    allowed = [f.name for f in dataclasses.fields(Recipe)]
    problems = [
        f"{where}: unknown recipe key {key!r}; allowed keys: {', '.join(allowed)}"
        for key in values
        if key not in allowed
    ]
    checks: dict[str, tuple[type, Any, str]] = {
        "lora_rank": (int, lambda v: v >= 1, "an integer >= 1"),
        "lora_alpha": (float, lambda v: v > 0, "a number > 0"),
        "lora_dropout": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
        "learning_rate": (float, lambda v: v > 0, "a number > 0"),
        "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
        "warmup_ratio": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
        "head": (str, lambda v: v in HEAD_KINDS, f"one of {list(HEAD_KINDS)}"),
        "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    }
    for key, value in values.items():
        if key not in checks:
            continue
        kind, ok, expected = checks[key]
        # bool is an int subclass; `lora_rank = true` is a mistake, not 1.
        typed = not isinstance(value, bool) and (
            isinstance(value, kind) or (kind is float and isinstance(value, int))
        )
        if not typed or not ok(value):
            problems.append(f"{where}: recipe.{key} = {value!r}; expected {expected}")
    return problems


def recipe_with_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """Return a copy of `recipe` with `overrides` applied and validated.

    Keys whose value is None are ignored, so an argparse namespace's unset flags can be
    passed as they are. All problems are reported in one ConfigError.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    problems = _recipe_problems(given, "overrides")
    if problems:
        raise ConfigError("invalid recipe override(s):\n  " + "\n  ".join(problems))
    floats = {f.name for f in dataclasses.fields(Recipe) if f.type in (float, "float")}
    return dataclasses.replace(recipe, **{k: float(v) if k in floats else v for k, v in given.items()})


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its data lives, how to read it, how to score it, how to train on it."""

    name: str
    """Short id, e.g. "sst2"; also the output folder name."""
    kind: str
    """"classification", "regression" (STS-B) or "squad" (extractive QA)."""
    hub_path: str | None
    """Hugging Face dataset id tried when no local data is given, e.g. "nyu-mll/glue"."""
    hub_config: str | None
    """Dataset config on the hub, e.g. "sst2"; None when the dataset has one config."""
    local_format: str
    """How local files are read: "glue_tsv" (original GLUE TSV), "squad" (official JSON) or "table" (csv/jsonl/parquet)."""
    glue_layout: str | None
    """Which GLUE TSV layout (key of glue_files.GLUE_LAYOUTS) when local_format is "glue_tsv"."""
    local_files: dict[str, str]
    """Split -> path relative to the data directory, e.g. {"validation": "SST-2/dev.tsv"}."""
    text_columns: tuple[str, ...]
    """Input text columns in hub names; two means a sentence pair."""
    label_column: str
    """Gold column: "label" for GLUE/IMDb, "answers" for SQuAD."""
    label_names: tuple[str, ...]
    """Class names in the hub ClassLabel order (index = label id); empty for regression/SQuAD."""
    metrics: tuple[str, ...]
    """Metric names reported at evaluation."""
    main_metric: str
    """The metric used to pick the best epoch and to compare runs."""
    validation_splits: tuple[str, ...]
    """Splits evaluated after training (MNLI has matched and mismatched)."""
    max_length: int
    """Token limit per example (per window for SQuAD), special tokens included."""
    recipe: Recipe = field(default_factory=Recipe)
    """Default hyper-parameters for this task."""
    squad_version: int | None = None
    """1 or 2 for SQuAD tasks (2 has unanswerable questions), else None."""
    score_range: tuple[float, float] | None = None
    """(min, max) gold score for regression, e.g. (0, 5) for STS-B; scores outside are data errors."""
    doc_stride: int | None = None
    """SQuAD only: tokens shared by consecutive windows of a long context."""
    description: str = ""
    """One line for humans (shown by `roberta-lora data-info`)."""
    source_path: Path | None = None
    """The TOML file this spec was read from."""

    @property
    def num_labels(self) -> int:
        """Output units of the head: classes, 1 for regression, 2 (start, end) for SQuAD."""
        if self.kind == "regression":
            return 1
        if self.kind == "squad":
            return 2
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True when each example is a pair of texts."""
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        """"train" followed by the validation splits."""
        return ("train", *self.validation_splits)


def tasks_dir() -> Path:
    """The directory holding the bundled task TOML files.

    ROBERTA_LORA_TASKS_DIR wins; then `tasks/` next to the package (source checkout or
    editable install); then the `task_files` resource inside an installed wheel.
    """
    return bundled_folder(TASKS_DIR_ENV, "tasks", "task_files")


def bundled_folder(env_var: str, checkout: str, resource: str) -> Path:
    """A folder of data files shipped with the package: $`env_var`, else `<checkout>/` beside the package
    (a source checkout or an editable install), else the `<resource>` package inside an installed wheel."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    folder = Path(__file__).resolve().parents[2] / checkout
    if folder.is_dir():
        return folder
    return Path(str(importlib.resources.files("roberta_lora") / resource))


def available_tasks() -> list[str]:
    """Names of the bundled tasks (TOML file stems), sorted."""
    directory = tasks_dir()
    return sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax at the position shown.") from err
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load a task by bundled name ("sst2") or from a TOML file path ("my_task.toml").

    Raises:
        ConfigError: unknown name (lists the bundled ones), or an invalid file (lists every problem).
    """
    text = str(name_or_path)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text
    path = Path(text) if looks_like_path else tasks_dir() / f"{text}.toml"
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL in it
        exists = False
    if not exists:
        shown = text if len(text) <= 80 else text[:77] + "..."
        if looks_like_path:
            raise ConfigError(f"task file {shown!r} does not exist; pass an existing .toml file or a task name.")
        names = available_tasks()
        close = difflib.get_close_matches(text.lower().replace("-", ""), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown task {shown!r}; bundled tasks in {tasks_dir()}: {', '.join(names) or '(none)'}.{hint} "
            "To add a task, pass the path of a .toml file written like tasks/sst2.toml."
        )
    return _spec_from_dict(_read_toml(path), path)


# TOML type of each key a task file may hold (every TaskSpec field but source_path).
_KEY_TYPES: dict[str, type] = {
    "name": str, "description": str, "kind": str, "squad_version": int, "hub_path": str,
    "hub_config": str, "local_format": str, "glue_layout": str, "local_files": dict,
    "text_columns": list, "label_column": str, "label_names": list, "score_range": list,
    "metrics": list, "main_metric": str, "validation_splits": list, "max_length": int,
    "doc_stride": int, "recipe": dict,
}


def _spec_from_dict(raw: dict[str, Any], path: Path) -> TaskSpec:
    """Validate a parsed task file and build the TaskSpec; every problem is reported at once."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _KEY_TYPES.get(key)
        if kind is None:
            problems.append(f"unknown key {key!r}; allowed keys: {', '.join(_KEY_TYPES)}")
        elif isinstance(value, bool) or not isinstance(value, kind):  # bool: `max_length = true` is a mistake
            problems.append(f"{key} = {value!r}; expected a TOML {kind.__name__}")
        elif kind is list and not all(isinstance(v, str if key != "score_range" else (int, float)) for v in value):
            problems.append(f"{key} = {value!r}; expected a list of {'numbers' if key == 'score_range' else 'strings'}")
        else:
            values[key] = value
    for key in ("kind", "metrics"):
        if key not in raw:
            problems.append(f"missing required key {key!r}")

    name = values.get("name", path.stem)
    kind = values.get("kind", "classification")
    squad = kind == "squad"
    squad_version = values.get("squad_version")
    local_format = values.get("local_format", "squad" if squad else "table")
    glue_layout = values.get("glue_layout", name) if local_format == "glue_tsv" else None
    text_columns = tuple(values.get("text_columns", ("question", "context") if squad else ()))
    label_names = tuple(values.get("label_names", ()))
    score_range = values.get("score_range")
    metrics = tuple(values.get("metrics", ()))
    main_metric = values.get("main_metric", metrics[0] if metrics else "")
    validation_splits = tuple(values.get("validation_splits", ("validation",)))
    max_length = values.get("max_length", 384 if squad else 128)
    doc_stride = values.get("doc_stride", 128 if squad else None)
    local_files = values.get("local_files", {})
    recipe_values = values.get("recipe", {})

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(kind in KINDS, f"kind = {kind!r}; expected one of {list(KINDS)}")
    check(squad_version in ((1, 2) if squad else (None,)),
          f"squad_version = {squad_version!r}; expected 1 or 2 for kind = 'squad', absent otherwise")
    check(local_format in LOCAL_FORMATS, f"local_format = {local_format!r}; expected one of {list(LOCAL_FORMATS)}")
    if local_format == "glue_tsv":
        layout = GLUE_LAYOUTS.get(str(glue_layout))
        check(layout is not None, f"glue_layout = {glue_layout!r}; expected one of {sorted(GLUE_LAYOUTS)}")
        check(layout is None or text_columns == tuple(layout.text_columns),
              f"text_columns = {list(text_columns)} but GLUE layout {glue_layout!r} produces "
              f"{list(layout.text_columns) if layout else []}")
    check(squad or len(text_columns) in (1, 2), f"text_columns = {list(text_columns)}; expected one column or a pair")
    check(kind != "classification" or len(set(label_names)) == len(label_names) >= 2,
          f"label_names = {list(label_names)}; a classification task needs at least two distinct names")
    check(kind == "classification" or not label_names, f"label_names is only for classification tasks, not {kind!r}")
    if score_range is not None:
        ok = kind == "regression" and len(score_range) == 2 and score_range[0] < score_range[1]
        check(ok, f"score_range = {score_range!r}; expected [min, max] with min < max, for regression only")
        score_range = (float(score_range[0]), float(score_range[1])) if ok else None
    check(bool(metrics), "metrics is empty; name at least one metric")
    problems.extend(_metric_problems(metrics, kind, squad_version))
    check(not metrics or main_metric in metrics, f"main_metric = {main_metric!r} is not one of metrics {list(metrics)}")
    check(bool(validation_splits) and "train" not in validation_splits,
          f"validation_splits = {list(validation_splits)}; expected split names other than 'train'")
    check(8 <= max_length <= MAX_POSITIONS, f"max_length = {max_length}; expected 8..{MAX_POSITIONS} (RoBERTa's limit)")
    if squad:
        check(doc_stride is not None and 0 < doc_stride < max_length,
              f"doc_stride = {doc_stride!r}; expected 0 < doc_stride < max_length ({max_length})")
    check(squad or doc_stride is None, "doc_stride is only for kind = 'squad'; remove it")
    for split, rel in local_files.items():
        check(split in ("train", *validation_splits),
              f"local_files.{split}: unknown split; expected one of {['train', *validation_splits]}")
        check(isinstance(rel, str) and bool(rel), f"local_files.{split} = {rel!r}; expected a relative file path")
    problems.extend(_recipe_problems(recipe_values, "[recipe]"))
    if problems:
        raise ConfigError(f"invalid task file {path}:\n  " + "\n  ".join(problems))
    return TaskSpec(
        name=name,
        kind=kind,
        hub_path=values.get("hub_path"),
        hub_config=values.get("hub_config"),
        local_format=local_format,
        glue_layout=glue_layout,
        local_files=dict(local_files),
        text_columns=text_columns,
        label_column=values.get("label_column", "answers" if squad else "label"),
        label_names=label_names,
        metrics=metrics,
        main_metric=main_metric,
        validation_splits=validation_splits,
        max_length=max_length,
        recipe=recipe_with_overrides(Recipe(), recipe_values),
        squad_version=squad_version,
        score_range=score_range,
        doc_stride=doc_stride,
        description=values.get("description", ""),
        source_path=path.resolve(),
    )


def _metric_problems(metrics: tuple[str, ...], kind: str, squad_version: int | None) -> list[str]:
    if kind == "squad":
        known: tuple[str, ...] = SQUAD_METRICS.get(squad_version or 1, ())
    else:
        known = GLUE_METRICS
    return [f"metrics: unknown metric {m!r} for a {kind} task; expected names from {list(known)}"
            for m in metrics if m not in known]


def load_config_overrides(toml_path: str | Path) -> dict[str, Any]:
    """Read recipe overrides from a `--config FILE` TOML.

    The file holds recipe keys at the top level or in a `[recipe]` table (as in task files),
    e.g. `learning_rate = 3e-4`. Unknown keys and bad values are all reported at once.
    """
    path = Path(toml_path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file to --config.")
    raw = _read_toml(path)
    table = raw.pop("recipe", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: recipe = {table!r}; expected a [recipe] table of recipe keys.")
    values = {**table, **raw}
    problems = _recipe_problems(values, "--config")
    if problems:
        raise ConfigError(f"invalid config file {path}:\n  " + "\n  ".join(problems))
    return values
