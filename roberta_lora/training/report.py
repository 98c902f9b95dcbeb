"""`report`: every finished run under a folder as one results table (results.md, results.csv, results.png).

A result is a seed group (a folder with the `summary.json` that `training/seeds.py` writes) or a finished
run folder outside any seed group. Runs of the same task, method and recipe are pooled: a row gives the
median over their seeds of the task's score at each run's best epoch (the LoRA paper's statistic), the
seeds' spread, and with `compare` the published number (`recipes/paper_results.toml`) and the difference.
Scores are in percent. Nothing is written but the three results.* files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta_lora.data.recipes import check_published_name, load_paper_results
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.evaluation.metrics import task_score
from roberta_lora.fileio import atomic_write_text
from roberta_lora.training.report_checks import check_runs_root
from roberta_lora.training.report_plot import plot_results
from roberta_lora.training.rundir import is_run_folder
from roberta_lora.training.seeds import SUMMARY, SUMMARY_FORMAT, metric_statistics, read_run_result
from roberta_lora.training.train_all import GLUE_TASKS

logger = logging.getLogger(__name__)

REPORT_FILES = ("results.md", "results.csv", "results.png")
# First line of results.md: how `report` recognises the results.* files it may replace.
MARKDOWN_MARKER = "<!-- written by `roberta-lora report`; results.csv and results.png beside it -->"
CSV_COLUMNS = ("task", "method", "recipe", "metric", "n_seeds", "median", "mean", "std", "min", "max", "paper",
               "difference", "task_score")
# What a hand-edited or damaged run file can raise while it is read (read_run_result trusts its JSON's shape).
_BROKEN_FILE = (ValueError, KeyError, TypeError, AttributeError)


@dataclass
class SeedScore:
    """One finished run's best-epoch validation metrics (0-1 for GLUE, percent for SQuAD)."""

    task: str
    method: str
    recipe: str
    seed: int
    main_metric: str
    percent_factor: float
    best_metrics: dict[str, float]
    source: Path  # the seed group folder, or the single run folder


@dataclass
class Skipped:
    """A run folder left out of the table, and why."""

    path: Path
    reason: str


@dataclass
class ReportRow:
    """One task (method, recipe) over its seeds; every score in percent."""

    task: str
    method: str
    recipe: str
    metric: str
    n_seeds: int
    median: float
    mean: float
    std: float | None  # sample standard deviation; None for a single seed
    min: float
    max: float
    paper: float | None = None
    difference: float | None = None  # median - paper, in percentage points
    sources: list[Path] = field(default_factory=list)
    task_score: float | None = None  # GLUE tasks: the median over seeds of `metrics.task_score` (percent)

    def csv_record(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in CSV_COLUMNS}
        return {k: round(v, 6) if isinstance(v, float) else ("" if v is None else v) for k, v in values.items()}


@dataclass
class GlueAverage:
    """One method and recipe: the GLUE average (the mean of the tasks' `task_score`s, train-all's number) and,
    when comparing, the mean of the paper's metrics over the same tasks, ours and the paper's."""

    method: str
    recipe: str
    tasks: list[str]
    ours: float
    paper: float | None = None
    left_out: list[str] = field(default_factory=list)  # GLUE tasks present with no published number
    ours_in_paper_metrics: float | None = None  # the mean of the rows' medians (the paper's metric per task)


@dataclass
class Published:
    """One table of recipes/paper_results.toml: scores in percent, and the metric each task reports."""

    name: str
    source: str
    metrics: dict[str, str]
    scores: dict[str, float]


@dataclass
class Report:
    rows: list[ReportRow]
    averages: list[GlueAverage]
    skipped: list[Skipped]
    markdown: str
    paths: list[Path]


def write_report(output_dir: str | Path, compare: str | None = None, destination: str | Path | None = None) -> Report:
    """Collect the finished runs under `output_dir` and write results.md, results.csv and results.png.

    Args:
        output_dir: searched recursively for seed groups and finished run folders.
        compare: a recipe name of recipes/paper_results.toml (e.g. "lora-paper-base") to compare with.
        destination: where the results.* files go (default `output_dir`); nothing else there is touched.

    Raises:
        ConfigError: `output_dir` missing or without a finished run, an unknown `compare` name, or a
            destination holding results.* files that `report` did not write.
    """
    root = check_runs_root(output_dir)
    target = Path(destination) if destination is not None else root
    check_destination(target)
    paper = paper_numbers(compare) if compare else None
    scores, skipped = find_results(root)
    if not scores:
        names = [_relative(s.path, root) for s in skipped]
        unfinished = f" ({len(names)} unfinished or unreadable: {', '.join(names[:3])})" if names else ""
        raise ConfigError(f"{root} holds no finished run{unfinished}; expected run folders with a final adapter/ "
                          "or seed groups with summary.json: finish the runs (train --resume) or pass another folder")
    rows, skipped = build_rows(scores, paper, skipped)
    averages = glue_averages(rows, paper)
    markdown = render_markdown(root, rows, averages, skipped, paper)
    atomic_write_text(target / "results.md", f"{MARKDOWN_MARKER}\n{markdown}")
    atomic_write_text(target / "results.csv", render_csv(rows))
    plot_results(target / "results.png", rows, averages, compare)
    return Report(rows, averages, skipped, markdown, [target / name for name in REPORT_FILES])


def check_destination(target: Path) -> None:
    """The destination is a new or existing folder whose results.* files (if any) `report` wrote."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--output {target} is a file; expected a folder for results.md/.csv/.png: "
                          "pass a folder name")
    held = [name for name in REPORT_FILES if os.path.lexists(target / name)]
    if not held:
        return
    markdown = target / "results.md"
    try:
        ours = markdown.is_file() and markdown.read_text(encoding="utf-8").startswith(MARKDOWN_MARKER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours or any(not (target / name).is_file() for name in held):
        raise ConfigError(f"{target} already holds {', '.join(held)} that `roberta-lora report` did not write "
                          "(train-all writes its own results.md); expected a folder without them: pass "
                          "--output DIR to write the report elsewhere")


def paper_numbers(name: str) -> Published:
    """The published scores of `name` in recipes/paper_results.toml and the metric each task reports."""
    published = load_paper_results()
    metrics = published.get("metrics", {})
    check_published_name(name, published)
    table = published[name]  # task = score in percent, and text such as `source = "..."`
    bad = [f"{k} = {v!r}" for k, v in table.items() if not isinstance(v, (int, float, str)) or isinstance(v, bool)]
    if bad or not isinstance(metrics, dict):
        raise ConfigError(f"paper_results.toml [{name}] {'; '.join(bad) or '[metrics] is not a table'}: expected "
                          "task = score in percent (e.g. cola = 63.4) and [metrics] task = metric name; fix the file")
    return Published(name, str(table.get("source", "")), {str(k): str(v) for k, v in metrics.items()},
                     {k: float(v) for k, v in table.items() if not isinstance(v, str)})


# ----------------------------------------------------------------------------- finding results
def find_results(root: Path) -> tuple[list[SeedScore], list[Skipped]]:
    """Every seed group and every finished run folder outside one, under `root` (recursively)."""
    scores: list[SeedScore] = []
    skipped: list[Skipped] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # our temporary folders are hidden
        summary = _read_summary(here / SUMMARY) if SUMMARY in filenames else None
        if summary is not None:
            found, left_out = read_seed_group(here, summary)
        elif is_run_folder(here):
            found, left_out = read_single_run(here)
        else:
            continue
        scores += found
        skipped += left_out
        dirnames[:] = []  # a group's runs are read through its summary; a run holds no other runs
    return scores, skipped


def _read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json of a seed group, or None when the file is not one (its seed runs then count one by one)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s); reading its runs one by one", path, error)
        return None
    return summary if isinstance(summary, dict) and summary.get("format") == SUMMARY_FORMAT else None


def read_seed_group(group: Path, summary: dict[str, Any]) -> tuple[list[SeedScore], list[Skipped]]:
    """The seeds a group's summary.json holds, and its seed folders it leaves out (unfinished, or newer)."""
    try:
        scores = [SeedScore(summary["task"], summary["method"], summary["recipe"], int(run["seed"]),
                            summary["main_metric"], float(summary["percent_factor"]),
                            {k: float(v) for k, v in run["best_metrics"].items()}, group)
                  for run in summary["runs"]]
    except _BROKEN_FILE as error:
        return [], [Skipped(group, f"its {SUMMARY} is damaged ({error!r}); write it again: run the same "
                                   "`train --seeds ...` into this folder (finished seeds are kept)")]
    listed = {run.get("run_dir") for run in summary["runs"]}
    skipped = []
    for run_dir in sorted(group.glob("seed-*")):
        if run_dir.name in listed or not is_run_folder(run_dir):
            continue
        try:
            read_run_result(run_dir)
        except _BROKEN_FILE as error:
            skipped.append(Skipped(run_dir, str(error)))
            continue
        skipped.append(Skipped(run_dir, f"finished after {SUMMARY} was written; run the same `train --seeds ...` "
                                        "into this folder again (finished seeds are kept) to count it"))
    return scores, skipped


def read_single_run(run_dir: Path) -> tuple[list[SeedScore], list[Skipped]]:
    """A finished run folder as one seed; an unfinished or unreadable one as skipped."""
    try:
        result = read_run_result(run_dir)
        kind = load_task(result.task).kind
    except _BROKEN_FILE as error:
        logger.info("skipping %s (%s)", run_dir, error)
        return [], [Skipped(run_dir, str(error))]
    factor = 1.0 if kind == "squad" else 100.0  # GLUE metrics are stored 0-1, SQuAD's in percent
    return [SeedScore(result.task, result.method, result.recipe, result.seed, result.main_metric, factor,
                      result.best_metrics, run_dir)], []


# ----------------------------------------------------------------------------- rows and averages
def build_rows(scores: Sequence[SeedScore], paper: Published | None,
               skipped: list[Skipped]) -> tuple[list[ReportRow], list[Skipped]]:
    """One row per (task, method, recipe), GLUE tasks first in GLUE order; returns the rows and `skipped`
    extended by runs that lack the row's metric (the paper's metric when comparing, else the main one)."""
    groups: dict[tuple[str, str, str], list[SeedScore]] = {}
    for score in scores:
        groups.setdefault((score.task, score.method, score.recipe), []).append(score)
    rows, skipped = [], list(skipped)
    for key in sorted(groups, key=_task_order):
        runs = groups[key]
        main = runs[0].main_metric
        metric = paper.metrics.get(key[0], main) if paper else main
        if all(metric not in r.best_metrics for r in runs):
            logger.warning("the %s runs have no %r; using the main metric %r", key[0], metric, main)
            metric = main
        skipped += [Skipped(r.source, f"no {metric!r} in its metrics") for r in runs if metric not in r.best_metrics]
        runs = [r for r in runs if metric in r.best_metrics]
        if runs:
            rows.append(make_row(key, metric, runs, paper.scores.get(key[0]) if paper else None))
    return rows, skipped


def make_row(key: tuple[str, str, str], metric: str, runs: Sequence[SeedScore], paper: float | None) -> ReportRow:
    """The statistics of `metric` over the runs' best epochs, in percent."""
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        logger.warning("%s has the same seed in several runs (%s); each run counts", key, seeds)
    stats = metric_statistics([{metric: r.best_metrics[metric]} for r in runs])[metric]
    k = runs[0].percent_factor
    median = k * stats["median"]
    names = load_task(key[0]).metrics if key[0] in GLUE_TASKS else ()
    score = 100 * statistics.median(task_score(r.best_metrics, names) for r in runs) if names else None
    return ReportRow(*key, metric=metric, n_seeds=len(runs), median=median, mean=k * stats["mean"],
                     std=k * stats["std"] if len(runs) > 1 else None, min=k * stats["min"], max=k * stats["max"], paper=paper,
                     difference=None if paper is None else median - paper,
                     sources=list(dict.fromkeys(r.source for r in runs)), task_score=score)


def _task_order(key: tuple[str, str, str]) -> tuple[int, str, str, str]:
    return (GLUE_TASKS.index(key[0]) if key[0] in GLUE_TASKS else len(GLUE_TASKS), *key)


def glue_averages(rows: Sequence[ReportRow], paper: Published | None) -> list[GlueAverage]:
    """Per method and recipe, the mean of the GLUE tasks' medians; when comparing, over the tasks the paper
    reports (the paper's mean over the same tasks beside it), the others named as left out."""
    averages = []
    for method, recipe in dict.fromkeys((r.method, r.recipe) for r in rows):
        glue = [r for r in rows if (r.method, r.recipe) == (method, recipe) and r.task in GLUE_TASKS]
        covered = [r for r in glue if paper is None or r.task in paper.scores]
        if covered:
            names = [r.task for r in covered]
            averages.append(GlueAverage(
                method, recipe, names, statistics.fmean(r.task_score for r in covered),
                statistics.fmean(paper.scores[t] for t in names) if paper else None,
                [r.task for r in glue if r.task not in names],
                statistics.fmean(r.median for r in covered) if paper else None))
    return averages


# ----------------------------------------------------------------------------- markdown and csv
def render_markdown(root: Path, rows: Sequence[ReportRow], averages: Sequence[GlueAverage],
                    skipped: Sequence[Skipped], paper: Published | None) -> str:
    """The results table with its GLUE average rows, what it shows, where the runs are, what was skipped."""
    pairs = list(dict.fromkeys((r.method, r.recipe) for r in rows))
    several = len(pairs) > 1
    head = ["task", *(["method", "recipe"] if several else []), "metric", "median", "range", "std", "n",
            *(["paper", "diff"] if paper else [])]
    lines = [f"# Results: {root}", "", _explanation(paper, None if several else pairs[0]), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.task, *([r.method, r.recipe] if several else []), r.metric, _num(r.median),
                 f"[{_num(r.min)}, {_num(r.max)}]", _num(r.std), str(r.n_seeds)]
        lines.append(_table_line(cells, paper, r.paper, r.difference))
    for a in averages:
        cells = ["**GLUE average**", *([a.method, a.recipe] if several else []), f"{len(a.tasks)} tasks", _num(a.ours), "", "", ""]
        lines.append(_table_line(cells, paper, None, None))
        if a.paper is not None:  # like for like with the paper: its metric per task, averaged
            cells = ["mean of the paper's metrics", *([a.method, a.recipe] if several else []), f"{len(a.tasks)} tasks",
                     _num(a.ours_in_paper_metrics), "", "", ""]
            lines.append(_table_line(cells, paper, a.paper, a.ours_in_paper_metrics - a.paper))
    for a in averages:
        lines += ["", _average_note(a, several)]
    lines += ["", "Runs:", ""]
    lines += [f"- {r.task} ({r.method}, {r.recipe}, n={r.n_seeds}): "
              + ", ".join(f"`{_relative(p, root)}`" for p in r.sources) for r in rows]
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}, not counted):", "",
                  *(f"- `{_relative(s.path, root)}`: {s.reason}" for s in skipped)]
    return "\n".join(lines) + "\n"


def _table_line(cells: list[str], paper: Published | None, published: float | None, diff: float | None) -> str:
    if paper:
        cells = [*cells, _num(published), _num(diff, signed=True)]
    return "| " + " | ".join(cells) + " |"


def _explanation(paper: Published | None, pair: tuple[str, str] | None) -> str:
    text = ("Scores in percent: the median over seeds of each run's score at its best epoch (chosen by the task's "
            "main metric); range = [min, max] and std (n - 1) over the seeds; n = number of seeds.")
    if pair:
        text += f" Method {pair[0]}, recipe {pair[1]}."
    if paper:
        text += (f" paper = {paper.name} in recipes/paper_results.toml ({paper.source or 'no source given'}), in "
                 "the metric the paper reports; diff = median - paper, in points.")
    return text


def _average_note(average: GlueAverage, several: bool) -> str:
    which = f" ({average.method}, {average.recipe})" if several else ""
    left_out = f"; left out (no published number): {', '.join(average.left_out)}" if average.left_out else ""
    return (f"GLUE average{which} over {', '.join(average.tasks)}{left_out}: the mean of the task scores (each the "
            "median over seeds of the mean of the metrics the task reports, as on the GLUE leaderboard: MRPC and QQP "
            "accuracy and F1, STS-B Pearson and Spearman, MNLI matched and mismatched), the number train-all gives"
            + (". The paper reports one metric per task, so it is compared on the row below it" if average.paper
               is not None else "") + ".")


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def render_csv(rows: Sequence[ReportRow]) -> str:
    """One line per row; scores in percent, paper and difference empty when not comparing."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.csv_record() for r in rows)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- figure
