"""Hyper-parameter sweeps: a grid, or Optuna's sampler with pruning, over ordinary runs.

Every trial is a seed group (`<root>/trial-<k>/seed-<n>/`, see `training.seeds`), so a sweep that is
killed and started again skips finished seeds and resumes interrupted ones. The result is one table
ranked by the median of the task's main metric over the seeds (each at its best epoch), written as
`sweep.md` and `sweep.csv`; `sweep.json` records the space so a restarted sweep checks it is the same.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.fileio import atomic_write_json, atomic_write_text
from roberta_lora.training.config import FIELD_FLAGS, RECIPE_FIELDS, TrainConfig
from roberta_lora.training.rundir import is_write_leftover
from roberta_lora.training.seeds import train_seeds

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
# What a sweep may vary: the recipe's settings and a few more (by field name or flag name).
SWEEPABLE = (*RECIPE_FIELDS, "targets", "head_dropout", "lora_dropout", "max_length", "grad_accum", "max_grad_norm")


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`["lr=1e-4,2e-4", "rank=4,8"]` -> {"learning_rate": [1e-4, 2e-4], "lora_rank": [4, 8]}.

    Names are flag names (lr, rank, alpha, dropout, batch-size) or TrainConfig fields; values are
    converted to the field's type. Raises ConfigError naming the item and what is allowed.
    """
    by_flag = {flag.removeprefix("--"): field for field, flag in FIELD_FLAGS.items()}
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        field = by_flag.get(name.strip(), name.strip().replace("-", "_"))
        if not sep or not values.strip() or field not in SWEEPABLE:
            allowed = sorted({*by_flag, *SWEEPABLE} - set(FIELD_FLAGS))
            raise ConfigError(f"--grid {item!r}: expected NAME=V1,V2,... with NAME one of {allowed}")
        if field in grid:
            raise ConfigError(f"--grid names {name!r} twice; give all its values in one --grid")
        grid[field] = [_convert(v.strip(), types[field], item) for v in values.split(",") if v.strip()]
    if not grid:
        raise ConfigError("a sweep needs at least one --grid NAME=V1,V2 (e.g. --grid lr=1e-4,5e-4)")
    return grid


def _convert(text: str, annotation: str, item: str) -> Any:
    try:
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
        if annotation.startswith("bool"):
            return {"true": True, "false": False}[text.lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"--grid {item!r}: {text!r} is not a {annotation.split(' ')[0]}") from None
    return text


def check_sweep_folder(root: Path, space: dict[str, Any]) -> None:
    """A sweep writes into a new or empty folder, or continues its own sweep with the same space."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--output-dir {root} is a file; choose a folder name")
    # Another process of the same launch may be writing sweep.json right now: its hidden temporary file is no
    # sign of a foreign folder.
    if not root.is_dir() or all(is_write_leftover(p.name) for p in root.iterdir()):
        return
    if not (root / SWEEP_FILE).is_file():
        raise ConfigError(f"--output-dir {root} holds files that are not a roberta-lora sweep; choose a new folder")
    saved = json.loads((root / SWEEP_FILE).read_text(encoding="utf-8"))
    if saved != space:
        raise ConfigError(f"{root} holds a sweep over {saved}; this one is over {space}: continue it with the same "
                          "--grid / --seeds / --optuna, or choose a new --output-dir")


def grid_sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int], root: Path,
               progress: bool = True) -> list[dict[str, Any]]:
    """Every combination of the grid, `seeds` each; returns the ranked rows (also written to the folder)."""
    space = {"kind": "grid", "task": base.task, "grid": grid, "seeds": list(seeds)}
    check_sweep_folder(root, space)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / SWEEP_FILE, space)
    names = list(grid)
    rows = []
    for number, values in enumerate(itertools.product(*(grid[n] for n in names))):
        params = dict(zip(names, values, strict=True))
        logger.info("sweep: trial %d %s", number, params)
        config = dataclasses.replace(base, **params, output_dir=str(root / f"trial-{number:03d}"), seed=seeds[0])
        summary = train_seeds(config, seeds, progress=progress)
        rows.append(trial_row(number, params, summary))
    return write_table(root, rows, load_task(base.task).main_metric)


def optuna_sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int], root: Path, trials: int,
                 progress: bool = True) -> list[dict[str, Any]]:
    """`trials` trials of Optuna's TPE sampler over the grid's values, pruned after each epoch of the first
    seed by the median pruner; the study lives in `<root>/optuna.db`, so a killed sweep continues."""
    optuna = require_optuna("--optuna", "without it, leave --optuna out for a grid sweep")
    space = {"kind": "optuna", "task": base.task, "grid": grid, "seeds": list(seeds), "trials": trials}
    check_sweep_folder(root, space)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / SWEEP_FILE, space)
    main_metric = load_task(base.task).main_metric
    warn_if_more_trials_than_settings(grid, trials)
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{root / 'optuna.db'}", load_if_exists=True,
                                direction="maximize", **search(seeds))

    def objective(trial: Any) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in grid.items()}
        return run_trial(trial, base, params, root / f"trial-{trial.number:03d}", seeds, main_metric,
                         prune=True, progress=progress)

    done = sum(t.state.is_finished() for t in study.trials)
    if trials > done:
        study.optimize(objective, n_trials=trials - done, catch=())
    rows = [trial_row(t.number, t.params, t.user_attrs["summary"]) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and "repeat_of" not in t.user_attrs]
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    logger.info("sweep: %d trials complete, %d pruned (%s)", len(rows), len(pruned), pruned)
    return write_table(root, rows, main_metric)


def storage_sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int], root: Path,
                  trials: int | None, storage_url: str, study_name: str = "sweep", heartbeat: int = 60,
                  progress: bool = True) -> list[dict[str, Any]]:
    """The grid (`trials` None) or `trials` Optuna trials, in a study several processes share
    (`training.shared_sweep`); returns the ranked rows of every trial finished by any of them."""
    require_optuna("--storage")
    from roberta_lora.training import shared_sweep

    heartbeat = shared_sweep.check_heartbeat(heartbeat)
    if not study_name.strip() or len(study_name) > 256 or not study_name.isprintable():
        raise ConfigError(f"--study-name {study_name[:80]!r}: expected a short printable name (e.g. rte-lr)")
    kind = "grid" if trials is None else "optuna"
    space: dict[str, Any] = {"kind": kind, "task": base.task, "grid": grid, "seeds": list(seeds)}
    if trials is not None:
        space["trials"] = trials
    check_sweep_folder(root, space)
    storage = shared_sweep.open_storage(storage_url, heartbeat)
    names = list(grid)
    if trials is None:
        slots = [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]
    else:
        slots = [{} for _ in range(trials)]
        warn_if_more_trials_than_settings(grid, trials)
    main_metric = load_task(base.task).main_metric
    study = shared_sweep.shared_study(storage, study_name, space, slots, **search(seeds))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / SWEEP_FILE, space)

    def run_slot(trial: Any, slot: int, params: dict[str, Any]) -> float:
        logger.info("sweep: trial %d %s (study trial %d)", slot, params, trial.number)
        return run_trial(trial, base, params, root / f"trial-{slot:03d}", seeds, main_metric,
                         prune=kind == "optuna", progress=progress)

    shared_sweep.work_through(study, storage, run_slot, grid, shared_sweep.lock_folder(storage_url, study_name, root),
                              heartbeat)
    rows = shared_sweep.stored_rows(study, lambda slot, params, summary: trial_row(
        slot, {name: params[name] for name in names}, summary))
    return write_table(root, rows, main_metric)


def require_optuna(flag: str, hint: str = "") -> Any:
    """The optuna module, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError(f"{flag} needs the optuna package: pip install -e '.[sweep]' (or pip install optuna)"
                          + (f"; {hint}" if hint else "")) from None
    return optuna


def search(seeds: Sequence[int]) -> dict[str, Any]:
    """The sampler and pruner of every Optuna sweep: TPE seeded by the first seed, the median pruner."""
    import optuna

    return {"sampler": optuna.samplers.TPESampler(seed=seeds[0]),
            "pruner": optuna.pruners.MedianPruner(n_startup_trials=1)}


def run_trial(trial: Any, base: TrainConfig, params: dict[str, Any], folder: Path, seeds: Sequence[int],
              main_metric: str, prune: bool, progress: bool) -> float:
    """One Optuna trial: its seed group in `folder` (pruned on the first seed's curve when `prune`), its
    summary stored on the trial; returns the median of the main metric."""
    import optuna

    earlier = finished_with(trial, params)
    if earlier is not None:  # the sampler drew settings already trained: the same runs would give the same result
        logger.info("sweep: trial %d repeats the settings of trial %d; its result is reused, not trained again",
                    trial.number, earlier.number)
        trial.set_user_attr("repeat_of", earlier.number)
        trial.set_user_attr("summary", earlier.user_attrs["summary"])
        return earlier.value
    config = dataclasses.replace(base, **params, output_dir=str(folder), seed=seeds[0])

    def report(seed: int, epoch: int, metrics: dict[str, float]) -> None:
        if prune and seed == seeds[0]:
            trial.report(metrics[main_metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {main_metric} {metrics[main_metric]:.4f}")

    summary = train_seeds(config, seeds, progress=progress, on_epoch_end=report)
    trial.set_user_attr("summary", summary)
    return summary["statistics"][main_metric]["median"]


def finished_with(trial: Any, params: dict[str, Any]) -> Any:
    """The first completed trial of `trial`'s study that ran `params` (not itself a repeat), or None."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.params == params and "summary" in other.user_attrs and "repeat_of" not in other.user_attrs:
            return other
    return None


def warn_if_more_trials_than_settings(grid: dict[str, list[Any]], trials: int) -> None:
    combinations = math.prod(len(values) for values in grid.values())
    if trials > combinations:
        logger.warning("sweep: --optuna %d is more than the grid's %d combination(s): only those are trained, and a "
                       "trial that draws trained settings again reuses their result (--grid trains each combination "
                       "once)", trials, combinations)


def trial_row(number: int, params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    main = summary["main_metric"]
    stats = summary["statistics"][main]
    return {"trial": number, **params, "metric": main, "median": stats["median"], "min": stats["min"],
            "max": stats["max"], "seeds": stats["n"]}


def write_table(root: Path, rows: list[dict[str, Any]], main_metric: str) -> list[dict[str, Any]]:
    """sweep.md and sweep.csv, best median first; returns the ranked rows."""
    if not rows:
        raise ConfigError(f"no trial of the sweep in {root} finished; see the logs above")
    ranked = sorted(rows, key=lambda r: r["median"], reverse=True)
    columns = list(dict.fromkeys(k for r in ranked for k in r))
    lines = ["| rank | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {i + 1} | " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for i, r in enumerate(ranked)]
    atomic_write_text(root / "sweep.md", f"Ranked by the median {main_metric} over the seeds (best epochs).\n\n"
                      + "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(ranked)
    atomic_write_text(root / "sweep.csv", buffer.getvalue())
    return ranked


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
