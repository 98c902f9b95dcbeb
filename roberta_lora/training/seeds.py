"""Several seeds of one training, and their summary: the paper's numbers are medians over 5 seeds,
each taken at its run's best epoch.

`train_seeds(config, [0, 1, 2])` trains `<output_dir>/seed-<n>/` for each seed, each an ordinary run
(a finished one is reused, an interrupted one resumed), then writes `summary.json` and `summary.md`
beside them: per validation metric the median, mean, standard deviation (n - 1), min and max over the
seeds' best epochs. Several processes may train different seeds of one group at once (one seed per
GPU); each rewrites the summary over every seed finished so far.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.fileio import atomic_write_json, atomic_write_text
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train
from roberta_lora.training.rundir import FINAL_ADAPTER, is_run_folder

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"
SUMMARY_FORMAT = "roberta-lora-seeds"


@dataclass
class RunResult:
    """A finished run as its files tell it (config.json and metrics.jsonl)."""

    run_dir: Path
    task: str
    method: str
    recipe: str
    seed: int
    main_metric: str
    best_epoch: int
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]


def read_run_result(run_dir: str | Path) -> RunResult:
    """The best and last epochs' validation metrics of a finished run folder.

    Raises ConfigError when the folder is not a finished run.
    """
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except (OSError, ValueError) as error:
        raise ConfigError(f"{run_dir} is not a finished run (its config.json / metrics.jsonl: {error})") from None
    if not records or not (run_dir / FINAL_ADAPTER).is_dir():
        raise ConfigError(f"{run_dir} has not finished (no final adapter); resume it with --resume")
    main_metric = load_task(config["task"]).main_metric
    metrics = [{k.removeprefix("eval_"): v for k, v in r.items() if k.startswith("eval_")} for r in records]
    best = max(range(len(records)), key=lambda i: metrics[i].get(main_metric, float("-inf")))
    return RunResult(run_dir, config["task"], config.get("method", "lora"), config.get("recipe", "tutorial"),
                     int(config.get("seed", 0)), main_metric, int(records[best]["epoch"]), metrics[best], metrics[-1])


def train_seeds(config: TrainConfig, seeds: Sequence[int], progress: bool = True,
                init_from: dict[int, str] | None = None,
                on_epoch_end: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """One run per seed under `config.output_dir` (`seed-<n>/`), then the summary; returns it.

    Args:
        config: the run's settings; `seed`, `output_dir` and `resume` are set per seed.
        seeds: distinct seeds, e.g. [0, 1, 2, 3, 4].
        init_from: per seed, the adapter to warm-start from (train-all's chained recipes).
        on_epoch_end: called with (seed, epoch, metrics) after each epoch (a sweep's pruner).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {list(seeds)}: expected distinct seeds, e.g. --seeds 0,1,2,3,4")
    if config.output_dir is None:  # as train() names a single run: outputs/<task>/<time>-<method>
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = dataclasses.replace(config, output_dir=str(Path("outputs") / load_task(config.task).name
                                                            / f"{stamp}-{config.method}"))
    if not config.output_dir.strip():
        raise ConfigError("output_dir is empty: pass a folder name, or leave --output-dir out")
    group = Path(config.output_dir)
    check_seed_group(group)
    for seed in seeds:
        run_dir = group / f"seed-{seed}"
        if (run_dir / FINAL_ADAPTER).is_dir():
            logger.info("seed %d: %s has finished; reusing it", seed, run_dir)
            continue
        resume = (run_dir / "checkpoint").is_dir() and (run_dir / "config.json").is_file()
        logger.info("seed %d: %s %s", seed, "resuming" if resume else "training", run_dir)
        warm = (init_from or {}).get(seed, config.init_from)
        callback = functools.partial(on_epoch_end, seed) if on_epoch_end is not None else None
        train(dataclasses.replace(config, seed=seed, output_dir=str(run_dir), resume=resume, overwrite=False,
                                  init_from=warm), progress=progress, on_epoch_end=callback)
    return write_summary(group)


def check_seed_group(group: Path) -> None:
    """A seed group folder is new, empty, or holds seed-<n> runs of roberta-lora (never another folder)."""
    if group.exists() and not group.is_dir():
        raise ConfigError(f"--output-dir {group} is a file; choose a folder name")
    if not group.is_dir():
        return
    foreign = [p.name for p in group.iterdir()
               if not (p.name.startswith("seed-") and p.is_dir()) and p.name not in (SUMMARY, "summary.md")]
    if foreign or any(not is_run_folder(p) and any(p.iterdir()) for p in group.glob("seed-*")):
        raise ConfigError(f"--output-dir {group} holds files that are not seed runs of roberta-lora "
                          f"({sorted(foreign)[:5]}); choose a new --output-dir")


def write_summary(group: Path) -> dict[str, Any]:
    """summary.json and summary.md over every finished seed-<n> run in `group`; returns the summary."""
    runs = []
    for run_dir in sorted(group.glob("seed-*"), key=lambda p: int(p.name.removeprefix("seed-") or 0)):
        try:
            runs.append(read_run_result(run_dir))
        except ConfigError as error:  # a seed another process is still training, or a killed one
            logger.info("summary: leaving out %s (%s)", run_dir, error)
    if not runs:
        raise ConfigError(f"{group} holds no finished seed run to summarise")
    first = runs[0]
    summary = {
        "format": SUMMARY_FORMAT, "format_version": 1, "task": first.task, "method": first.method,
        "recipe": first.recipe, "main_metric": first.main_metric, "seeds": [r.seed for r in runs],
        # GLUE metrics are stored on a 0-1 scale, SQuAD's in percent (as the official scripts print them).
        "percent_factor": 1 if load_task(first.task).kind == "squad" else 100,
        "runs": [{"seed": r.seed, "run_dir": r.run_dir.name, "best_epoch": r.best_epoch,
                  "best_metrics": r.best_metrics, "final_metrics": r.final_metrics} for r in runs],
        "statistics": metric_statistics([r.best_metrics for r in runs]),
    }
    atomic_write_json(group / SUMMARY, summary)
    atomic_write_text(group / "summary.md", summary_markdown(summary))
    return summary


def metric_statistics(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric over the seeds: median (the paper's statistic), mean, sample standard deviation, min, max."""
    names = [name for name in per_seed[0] if all(name in m for m in per_seed)]
    result = {}
    for name in names:
        values = [float(m[name]) for m in per_seed]
        result[name] = {"median": statistics.median(values), "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "n": len(values)}
    return result


def summary_markdown(summary: dict[str, Any]) -> str:
    k = summary["percent_factor"]
    rows = "\n".join(f"| {name} | {k * s['median']:.2f} | {k * s['mean']:.2f} | {k * s['std']:.2f} | "
                     f"{k * s['min']:.2f} | {k * s['max']:.2f} |" for name, s in summary["statistics"].items())
    seeds = ", ".join(f"{r['seed']} (epoch {r['best_epoch']})" for r in summary["runs"])
    return (f"# {summary['task']} ({summary['method']}, recipe {summary['recipe']}): {len(summary['runs'])} seeds\n\n"
            f"Best epoch of each seed: {seeds}. Metrics in percent, over the seeds' best epochs.\n\n"
            "| metric | median | mean | std | min | max |\n|---|---|---|---|---|---|\n" + rows + "\n")
