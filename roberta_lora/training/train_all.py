"""`train-all`: one adapter per task (and per method), then one results table.

Each task's score is `evaluation.metrics.task_score`: the mean of the metrics it reports (MRPC/QQP:
accuracy and F1, STS-B: Pearson and Spearman, MNLI: matched and mismatched accuracy), as on the GLUE
leaderboard, at the run's best evaluation (with seeds: the median over the seeds of that score); the
GLUE average is the mean of the task scores: the same numbers `report` gives for the same runs.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.data.readers import check_local_files, load_split, resolve_local_file
from roberta_lora.data.recipes import DEFAULT_RECIPE, NamedRecipe, load_recipe
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.metrics import task_score
from roberta_lora.fileio import atomic_write_text
from roberta_lora.hub import hub_reachable
from roberta_lora.model.config import adapter_parameter_count, adapter_size_bytes
from roberta_lora.training.config import resolve_train_config
from roberta_lora.training.loop import train
from roberta_lora.training.rundir import check_run_folder, is_run_folder
from roberta_lora.training.seeds import check_seed_group, train_seeds

logger = logging.getLogger(__name__)

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


@dataclass
class ResultsTable:
    rows: list[dict[str, Any]]
    markdown: str
    markdown_path: Path
    csv_path: Path


def tasks_with_data(data_dir: str | None) -> list[str]:
    """The GLUE tasks whose train and validation files are present (all nine when using the hub)."""
    if data_dir is None:
        return list(GLUE_TASKS)
    present = []
    for name in GLUE_TASKS:
        spec = load_task(name)
        try:
            for split in spec.splits:
                resolve_local_file(spec, split, data_dir)
        except (ConfigError, DataError):
            logger.info("train-all: skipping %s (files missing under %s)", name, data_dir)
            continue
        present.append(name)
    return present


def train_all(tasks: list[str] | None, methods: list[str], overrides: dict[str, Any], config_file: str | None = None,
              output_dir: str | None = None, progress: bool = True, seeds: list[int] | None = None) -> ResultsTable:
    """Train every (task, method) pair in turn and write train-all.md and train-all.csv under output_dir
    (`roberta-lora report` writes results.md / .csv / .png beside them).

    With a recipe that warm-starts tasks from another task's adapter (the LoRA paper's MRPC, RTE and
    STS-B from MNLI), the source task trains first and each run starts from its `best/` adapter of the
    same seed and method. With `seeds`, each (task, method) is a seed group (`<task>-<method>/seed-<n>/`)
    and its table row shows the seeds' medians at their best epochs.
    """
    recipe = load_recipe(overrides.get("recipe") or DEFAULT_RECIPE)
    tasks = tasks or tasks_with_data(overrides.get("data_dir"))
    if recipe is not None and tasks:
        tasks = chain_warm_starts(tasks, recipe)
    if not tasks:
        raise ConfigError(f"no task has its files under {overrides.get('data_dir')}; pass --tasks or fix --data-dir")
    if not methods:
        raise ConfigError("--methods is empty; pass a comma list of lora, head, full (e.g. --methods lora)")
    root = Path(output_dir or Path("outputs") / f"train-all-{time.strftime('%Y%m%d-%H%M%S')}")
    check_results_folder(root)
    if overrides.get("data_dir") is None and not hub_reachable():
        raise ConfigError("train-all without --data-dir reads the tasks from the Hugging Face hub, which is not "
                          "reachable (offline?); pass --data-dir (e.g. ../shared/data/glue)")
    # Every task, method, setting, data file and run folder is checked before the first training starts:
    # a typo or a bad label in the last task must not surface hours later.
    plan = []
    for task in tasks:
        spec = load_task(task)
        for method in methods:
            config = resolve_train_config(
                spec, {**overrides, "task": task, "method": method, "output_dir": str(root / f"{spec.name}-{method}")},
                config_file,
            )
            if seeds:
                check_seed_group(Path(config.output_dir))
            else:
                check_run_folder(Path(config.output_dir), config.resume, config.overwrite)
            source = recipe.warm_start_from(spec.name) if recipe is not None else None
            plan.append((spec, method, config, source))
        if overrides.get("data_dir") is not None:
            check_local_files(spec, overrides["data_dir"])
            for split in spec.splits:  # reads and validates every row (fast: no tokenization)
                load_split(spec, split, overrides["data_dir"])
    rows = []
    for spec, method, config, source in plan:
        logger.info("train-all: %s with %s%s", spec.name, method, f" (warm start from {source})" if source else "")
        started = time.perf_counter()
        source_dir = root / f"{source}-{method}" if source else None
        if seeds:
            warm = {seed: str(source_dir / f"seed-{seed}" / "best") for seed in seeds} if source_dir else None
            summary = train_seeds(config, seeds, progress=progress, init_from=warm)
            metrics = {name: s["median"] for name, s in summary["statistics"].items()}
            score = statistics.median(task_score(r["best_metrics"], spec.metrics) for r in summary["runs"])
            run_dir = Path(config.output_dir) / f"seed-{seeds[0]}"
        else:
            if source_dir:
                config.init_from = str(source_dir / "best")
            result = train(config, progress=progress)
            metrics, run_dir = (result.best_metrics or result.metrics), result.run_dir
            score = task_score(metrics, spec.metrics)
        if spec.kind == "squad":  # SQuAD scores are in percent: its main metric, on the table's 0-1 scale
            score = metrics[spec.main_metric] / 100
        adapter = run_dir / "adapter"
        rows.append({
            "task": spec.name, "method": method, "main_metric": spec.main_metric,
            "task_score": score, **metrics,
            "trainable_parameters": adapter_parameter_count(adapter), "adapter_bytes": adapter_size_bytes(adapter),
            "wall_seconds": round(time.perf_counter() - started, 1), "run_dir": str(config.output_dir),
        })
    markdown = render_markdown(rows, methods)
    atomic_write_text(root / "train-all.md", markdown)
    atomic_write_text(root / "train-all.csv", render_csv(rows))
    return ResultsTable(rows, markdown, root / "train-all.md", root / "train-all.csv")


def chain_warm_starts(tasks: list[str], recipe: NamedRecipe) -> list[str]:
    """`tasks` ordered so each warm-start source trains before the tasks that start from it (the source
    is added when missing: RTE in the paper recipe needs MNLI)."""
    ordered: list[str] = []

    def visit(task: str, path: tuple[str, ...]) -> None:
        if task in ordered:
            return
        if task in path:
            raise ConfigError(f"recipe {recipe.name!r} warm-starts in a circle: {' -> '.join((*path, task))}")
        source = recipe.warm_start_from(task)
        if source:
            visit(source, (*path, task))
        ordered.append(task)

    for task in tasks:
        visit(load_task(task).name, ())
    return ordered


def check_results_folder(root: Path) -> None:
    """train-all writes into a new folder, an empty one, or one of its own (it holds train-all.md or
    <task>-<method> runs); never into another folder."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--output-dir {root} is a file; choose a folder name")
    if not root.is_dir() or not any(root.iterdir()):
        return
    ours = (root / "train-all.md").is_file() or (root / "results.md").is_file() or any(
        is_run_folder(p) or (p / "summary.json").is_file() or any(p.glob("seed-*")) for p in root.iterdir() if p.is_dir())
    if not ours:
        held = sorted(p.name for p in root.iterdir())[:5]
        raise ConfigError(f"--output-dir {root} already holds files that are not train-all results ({held}); "
                          "choose a new --output-dir")


def render_markdown(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """A side-by-side table of task scores per method (with the GLUE average), then the details."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by_key = {(r["task"], r["method"]): r for r in rows}
    lines = ["| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task in tasks:
        cells = [f"{100 * by_key[(task, m)]['task_score']:.2f}" if (task, m) in by_key else "" for m in methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    averages = []
    for method in methods:
        scores = [r["task_score"] for r in rows if r["method"] == method and r["task"] in GLUE_TASKS]
        averages.append(f"{100 * sum(scores) / len(scores):.2f}" if scores else "")
    lines.append("| **GLUE average** | " + " | ".join(averages) + " |")
    lines += ["", "| task | method | metrics | trainable params | adapter size | wall time |",
              "|---|---|---|---|---|---|"]
    metric_keys = ("task", "method", "main_metric", "task_score", "trainable_parameters", "adapter_bytes",
                   "wall_seconds", "run_dir")
    for r in rows:
        metrics = ", ".join(f"{k} {100 * v:.2f}" for k, v in r.items() if k not in metric_keys)
        lines.append(f"| {r['task']} | {r['method']} | {metrics} | {r['trainable_parameters']:,} | "
                     f"{r['adapter_bytes'] / 1e6:.2f} MB | {r['wall_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
