"""Named training recipes: data (TOML files in `recipes/`), not code.

A task file's own `[recipe]` is the seed tutorial's recipe, named "tutorial". The default recipe
(`DEFAULT_RECIPE`) is a named recipe file chosen by benchmarks/results/variants.md. A named recipe file
(`recipes/lora-paper-base.toml`, or any TOML path) gives `[settings]` for every task and
`[tasks.<name>]` per task, which override the task file's recipe; `--config` and flags override the
named recipe. `warm_start_from = "<task>"` in a task's table says which task's adapter (of the same
seed) that task starts from; `train-all` chains those runs. See recipes/README.md.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta_lora.data.tasks import bundled_folder
from roberta_lora.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_DIR_ENV = "ROBERTA_LORA_RECIPES_DIR"
TUTORIAL_RECIPE = "tutorial"  # the task file's own [recipe]: "Implementing LoRA from scratch"
DEFAULT_RECIPE = "pissa"  # recipes/pissa.toml: what `train` uses without --recipe
PAPER_RESULTS = "paper_results"
# The training settings a recipe may set (a subset of TrainConfig's fields; types are checked there).
RECIPE_KEYS = (
    "lora_rank", "lora_alpha", "lora_dropout", "batch_size", "learning_rate", "epochs", "warmup_ratio",
    "weight_decay", "head", "seed", "targets", "head_dropout", "train_biases", "train_layer_norms",
    "train_embeddings", "max_length", "grad_accum", "max_grad_norm", "mixed_precision",
    "init_lora_weights", "use_rslora", "use_dora", "loraplus_lr_ratio",
)
WARM_START_KEY = "warm_start_from"


@dataclass(frozen=True)
class NamedRecipe:
    """A recipe file: shared settings, per-task settings and warm starts."""

    name: str
    description: str = ""
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def for_task(self, task: str) -> dict[str, Any]:
        """The training settings of `task` (shared, then the task's own; warm start left out).

        Raises ConfigError when the recipe has no table for the task.
        """
        if self.tasks and task not in self.tasks:
            raise ConfigError(f"recipe {self.name!r} has no settings for task {task!r}; it covers "
                              f"{sorted(self.tasks)} (add a [tasks.{task}] table to {self.path})")
        own = {k: v for k, v in self.tasks.get(task, {}).items() if k != WARM_START_KEY}
        return {**self.settings, **own}

    def warm_start_from(self, task: str) -> str | None:
        """The task whose adapter `task` starts from in this recipe, if any."""
        return self.tasks.get(task, {}).get(WARM_START_KEY)


def recipes_dir() -> Path:
    """The bundled recipe files: $ROBERTA_LORA_RECIPES_DIR, `recipes/` beside the package (checkout or
    editable install), else the `recipe_files` resource of an installed wheel."""
    return bundled_folder(RECIPES_DIR_ENV, "recipes", "recipe_files")


def available_recipes() -> list[str]:
    """The names of the bundled recipes, "tutorial" first."""
    directory = recipes_dir()
    files = sorted(p.stem for p in directory.glob("*.toml") if p.stem != PAPER_RESULTS) if directory.is_dir() else []
    return [TUTORIAL_RECIPE, *files]


def load_recipe(name_or_path: str | Path) -> NamedRecipe | None:
    """A named recipe ("lora-paper-base") or a recipe TOML path; None for "tutorial" (the task's own).

    Raises ConfigError for an unknown name or a file with unknown keys or a bad structure.
    """
    text = str(name_or_path)
    if text == TUTORIAL_RECIPE:
        return None
    path = Path(text) if text.endswith(".toml") or os.sep in text else recipes_dir() / f"{text}.toml"
    if not path.is_file():
        names = available_recipes()
        close = difflib.get_close_matches(text, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown recipe {text!r}; recipes: {', '.join(names)}.{hint} A recipe file is a TOML "
                          "like recipes/lora-paper-base.toml (pass its path)")
    raw = _read(path)
    problems = [f"unknown top-level key {k!r}" for k in raw if k not in ("name", "description", "source",
                                                                          "settings", "tasks")]
    settings = raw.get("settings", {})
    tasks = raw.get("tasks", {})
    if not isinstance(settings, dict) or not isinstance(tasks, dict):
        problems.append("[settings] and [tasks.<name>] must be tables")
        settings, tasks = {}, {}
    problems += [f"[settings] {k!r} is not a recipe setting" for k in settings if k not in RECIPE_KEYS]
    for task, values in tasks.items():
        if not isinstance(values, dict):
            problems.append(f"[tasks.{task}] must be a table")
            continue
        problems += [f"[tasks.{task}] {k!r} is not a recipe setting" for k in values
                     if k not in (*RECIPE_KEYS, WARM_START_KEY)]
        source = values.get(WARM_START_KEY)
        if source is not None and (not isinstance(source, str) or source not in tasks or source == task):
            problems.append(f"[tasks.{task}] warm_start_from = {source!r}: expected another task of this recipe")
    if problems:
        raise ConfigError(f"recipe file {path}: " + "; ".join(problems) + f" (allowed settings: {', '.join(RECIPE_KEYS)})")
    return NamedRecipe(name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")),
                       source=str(raw.get("source", "")), settings=dict(settings),
                       tasks={k: dict(v) for k, v in tasks.items()}, path=path)


def check_published_name(name: str, published: dict[str, Any] | None = None) -> None:
    """ConfigError unless `name` is a table of recipes/paper_results.toml (`report --compare NAME`)."""
    published = load_paper_results() if published is None else published
    names = sorted(k for k, v in published.items() if isinstance(v, dict) and k != "metrics")
    if name not in names:
        raise ConfigError(f"--compare {name!r} is not in paper_results.toml; expected one of: "
                          f"{', '.join(names) or '(none)'}: pass one of those names")


def load_paper_results() -> dict[str, Any]:
    """The published numbers recipes are compared with (recipes/paper_results.toml): a [metrics] table
    (the metric each task reports) and one table per recipe name of task -> score in percent."""
    path = recipes_dir() / f"{PAPER_RESULTS}.toml"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; it holds the published numbers `report --compare` uses")
    return _read(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"{path} is not a readable TOML file ({error})") from None
