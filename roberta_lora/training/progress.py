"""`RunState`: where a training run is and how it is doing: the position in the data, the history of
losses and evaluations, the best evaluation so far (by `--metric-for-best`) and early stopping.

Everything here is plain data, saved whole in each checkpoint and restored on resume, so a resumed run
continues with the same bookkeeping as the interrupted one (the tensors, optimizer and RNG are in
`checkpoints`). A NaN metric ranks below every number (a constant prediction gives a NaN Pearson): it
never freezes the choice of the best evaluation.
"""

from __future__ import annotations

import math
from typing import Any

from roberta_lora.errors import ConfigError
from roberta_lora.training.run_files import RunHistory

# Metrics where smaller is better; every other metric the toolkit reports grows with quality.
LOWER_IS_BETTER = ("loss",)
SQUAD_METRICS = {1: ("exact_match", "f1"),
                 2: ("exact", "f1", "best_exact", "best_f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")}


def greater_is_better(metric: str) -> bool:
    return not any(word in metric.lower() for word in LOWER_IS_BETTER)


def task_metric_names(spec: Any) -> list[str]:
    """The metric names a task's evaluation reports (GLUE: its metrics, suffixed for extra splits)."""
    if spec.kind == "squad":
        return list(SQUAD_METRICS[spec.squad_version])
    names = []
    for split in spec.validation_splits:
        suffix = "" if split == spec.validation_splits[0] else "_" + split.removeprefix("validation_")
        names += [f"{metric}{suffix}" for metric in spec.metrics]
    return names


def check_metric_for_best(name: str | None, spec: Any) -> None:
    """Refuse, before any work, a --metric-for-best the task never reports."""
    names = task_metric_names(spec)
    if name is not None and name not in names:
        raise ConfigError(f"--metric-for-best {name!r} is not a metric of task {spec.name}; it reports {names}")


def check_metric_name(name: str, found: dict[str, float]) -> None:
    if name not in found:
        raise ConfigError(f"--metric-for-best {name!r} is not among the metrics this evaluation reported: "
                          f"{sorted(found)}")


def better(value: float, than: float | None, greater: bool) -> bool:
    """Whether `value` beats `than` (None: nothing yet); NaN beats nothing and everything beats NaN."""
    if than is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(than):
        return True
    return value > than if greater else value < than


class RunState:
    """The bookkeeping of one run (see the module docstring).

    Args:
        metric: the metric that picks the best evaluation.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.greater = greater_is_better(metric)
        self.history = RunHistory()
        self.best: dict[str, Any] = {"epoch": -1, "step": 0, "value": None, "metrics": {}}
        # epoch: the epoch in progress (0-based); batches: micro-batches of it already trained on.
        self.position = {"epoch": 0, "batches": 0, "global_step": 0, "since_best": 0}
        self.saved_step: int | None = None  # the step of the last checkpoint written
        self.stopped_early = False
        self.batches_per_epoch = 0

    @property
    def global_step(self) -> int:
        return self.position["global_step"]

    def restore(self, resumed: dict[str, Any]) -> None:
        for key in ("epoch", "batches", "global_step", "since_best"):
            self.position[key] = resumed[key]
        self.best = {"step": 0, **resumed["best"]}
        self.history = resumed["history"]
        self.saved_step = resumed["global_step"]

    def start_epoch(self, epoch: int, skipped: int) -> None:
        self.position.update(epoch=epoch, batches=skipped)

    def step(self, loss: float, learning_rate: float) -> None:
        """One optimizer step done with this mean loss, at this learning rate."""
        self.history.steps.append(self.global_step)
        self.history.learning_rates.append(learning_rate)
        self.history.losses.append(loss)
        self.position["global_step"] += 1

    def losses_since_last_record(self) -> list[float]:
        since = self.history.epochs[-1]["step"] if self.history.epochs else 0
        return [loss for step, loss in zip(self.history.steps, self.history.losses, strict=True) if step >= since]

    def record(self, metrics: dict[str, float], epoch: float, learning_rate: float, seconds: float) -> dict[str, Any]:
        """A metrics.jsonl record for an evaluation now; train_loss is the mean over the steps since the last
        record (an epoch's steps when evaluating per epoch, a partial last epoch's own steps too)."""
        losses = self.losses_since_last_record()
        record = {"epoch": int(epoch) if float(epoch).is_integer() else epoch, "step": self.global_step,
                  "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                  "learning_rate": learning_rate, "elapsed_seconds": round(seconds, 2),
                  **{f"eval_{k}": v for k, v in metrics.items()}}
        self.history.epochs.append(record)
        return record

    def judge(self, metrics: dict[str, float]) -> bool:
        """Whether this evaluation is the best so far (then it becomes `best`)."""
        value = float(metrics[self.metric])
        if better(value, self.best["value"], self.greater):
            record = self.history.epochs[-1]
            self.best = {"epoch": record["epoch"], "step": record["step"], "value": value, "metrics": metrics}
            self.position["since_best"] = 0
            return True
        self.position["since_best"] += 1
        return False

    def patience_spent(self, patience: int | None) -> bool:
        """Early stopping: `patience` evaluations in a row without a better metric."""
        if patience is not None and self.position["since_best"] >= patience:
            self.stopped_early = True
        return self.stopped_early

    def checkpoint_position(self) -> dict[str, int]:
        return dict(self.position)
