"""results.png of `roberta-lora report`: per task our median with the seeds' min-max, the paper's number
beside it, and the GLUE averages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roberta_lora.fileio import atomic_write_with

if TYPE_CHECKING:  # the rows are report.py's; nothing is imported from it at run time
    from roberta_lora.training.report import GlueAverage, ReportRow

METRIC_LABELS = {"matthews_correlation": "MCC", "accuracy": "acc.", "pearson": "Pearson", "spearmanr": "Spearman",
                 "f1": "F1", "exact_match": "EM", "exact": "EM"}
AVERAGE_SLOT = "GLUE avg"


def plot_results(path: Path, rows: Sequence[ReportRow], averages: Sequence[GlueAverage], compare: str | None) -> None:
    """results.png: per task our median with the seeds' min-max as an error bar (one colour per method and
    recipe), the paper's number as a diamond to its right, and the GLUE averages after a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys((r.method, r.recipe) for r in rows))
    slots = list(dict.fromkeys(r.task for r in rows)) + ([AVERAGE_SLOT] if averages else [])
    figure, axes = plt.subplots(figsize=(max(7.0, 1.1 * len(slots) + 3.0), 5.5))
    width = 0.5 / len(pairs)  # each method/recipe gets a slot of this width; the paper sits at +0.3
    for i, pair in enumerate(pairs):
        _plot_ours(axes, slots, pair, rows, averages, (i - (len(pairs) - 1) / 2) * width - 0.1, f"C{i}")
    if compare:
        _plot_paper(axes, slots, rows, averages, compare)
    if averages:
        axes.axvline(len(slots) - 1.5, color="grey", linestyle=":", linewidth=1)
    axes.set_xticks(range(len(slots)), [_tick_label(t, rows, averages) for t in slots])
    axes.set_xlim(-0.6, len(slots) - 0.4)
    axes.margins(y=0.15)
    axes.set(xlabel="task (metric, number of seeds)", ylabel="score (%)")
    title = "Our median over seeds at each run's best epoch (error bar: min to max over the seeds)"
    axes.set_title(title + (f"\ncompared with the published numbers of {compare}" if compare else ""))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=min(3, len(pairs) + bool(compare)), fontsize=9)
    figure.tight_layout()
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    plt.close(figure)


def _plot_ours(axes: Any, slots: list[str], pair: tuple[str, str], rows: Sequence[ReportRow],
               averages: Sequence[GlueAverage], offset: float, color: str) -> None:
    """One method/recipe: medians with min-max error bars, and its GLUE average as a square."""
    ours = [r for r in rows if (r.method, r.recipe) == pair]
    x = [slots.index(r.task) + offset for r in ours]
    spread = [[r.median - r.min for r in ours], [r.max - r.median for r in ours]]
    axes.errorbar(x, [r.median for r in ours], yerr=spread, fmt="o", color=color, capsize=5, markersize=7,
                  label=f"ours: {pair[0]}, recipe {pair[1]} (median, min to max)")
    labels = [(xi, r.median, r.max) for xi, r in zip(x, ours, strict=True)]
    for a in averages:
        if (a.method, a.recipe) == pair:  # the GLUE average (task scores: train-all's number), filled
            axes.plot([len(slots) - 1 + offset], [a.ours], "s", color=color, markersize=7)
            labels.append((len(slots) - 1 + offset, a.ours, a.ours))
            if a.ours_in_paper_metrics is not None:  # like for like with the paper's diamond: hollow
                axes.plot([len(slots) - 0.85 + offset], [a.ours_in_paper_metrics], "s", markerfacecolor="none",
                          markeredgecolor=color, markersize=7, label="ours in the paper's metrics (mean)")
    for xi, value, top in labels:
        axes.annotate(f"{value:.1f}", (xi, top), textcoords="offset points", xytext=(0, 6), ha="center",
                      fontsize=8, color=color)


def _plot_paper(axes: Any, slots: list[str], rows: Sequence[ReportRow], averages: Sequence[GlueAverage],
                compare: str) -> None:
    """The published numbers as diamonds right of our points, labelled; the paper's mean over each
    method/recipe's GLUE tasks edged in that method/recipe's colour when there are several."""
    pairs = list(dict.fromkeys((r.method, r.recipe) for r in rows))
    points = sorted({(slots.index(r.task) + 0.3, r.paper, "black") for r in rows if r.paper is not None})
    points += [(len(slots) - 0.7, a.paper, "black" if len(pairs) == 1 else f"C{pairs.index((a.method, a.recipe))}")
               for a in averages if a.paper is not None]
    for i, (x, value, edge) in enumerate(points):
        axes.plot([x], [value], "D", markerfacecolor="none", markeredgecolor=edge, markersize=7,
                  label=None if i else f"paper: {compare}")
        axes.annotate(f"{value:.1f}", (x, value), textcoords="offset points", xytext=(0, 7), ha="center",
                      fontsize=8, color="dimgray")


def _tick_label(slot: str, rows: Sequence[ReportRow], averages: Sequence[GlueAverage]) -> str:
    if slot == AVERAGE_SLOT and not any(r.task == slot for r in rows):
        return f"{slot}\n({'/'.join(str(len(a.tasks)) for a in averages)} tasks)"
    ours = [r for r in rows if r.task == slot]
    metric = METRIC_LABELS.get(ours[0].metric, ours[0].metric)
    return f"{slot}\n({metric}, n={ours[0].n_seeds})" if len(ours) == 1 else f"{slot}\n({metric})"
