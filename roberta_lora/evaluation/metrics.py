"""GLUE metrics: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Every function takes two 1-D sequences (lists, numpy arrays or CPU tensors) of equal,
non-zero length and returns a plain Python float on the [0, 1] scale (not percent).
The classification metrics are written in numpy and give the numbers scikit-learn
gives; the correlations call `scipy.stats` directly, which is what the GLUE tooling
(and the Hugging Face `glue` metric) use, so the values are identical.

Undefined values never raise:

* `f1_binary` is 0.0 when there are no true and no predicted positives (sklearn's
  default `zero_division` result).
* `matthews_correlation` is 0.0 when its denominator is 0 (e.g. every prediction is
  the same class), exactly as `sklearn.metrics.matthews_corrcoef`.
* `pearson` / `spearman` return `nan` for a constant input, with scipy's own
  `ConstantInputWarning`, because that is what scipy returns. With fewer than two
  pairs scipy's `pearsonr` raises; we return `nan` with a `RuntimeWarning` instead so an
  evaluation loop on a tiny split never crashes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from roberta_lora.choices import GLUE_METRICS
from roberta_lora.errors import ConfigError

MetricFunction = Callable[[Any, Any], float]


def _as_pair(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D numpy arrays of the same non-zero length, or a ConfigError."""
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    if preds.ndim != 1 or refs.ndim != 1:
        raise ConfigError(
            f"metrics expect 1-D predictions and references, got shapes {preds.shape} and "
            f"{refs.shape}; take the argmax of the logits (or squeeze regression outputs) first."
        )
    if len(preds) != len(refs):
        raise ConfigError(
            f"got {len(preds)} predictions but {len(refs)} references; they must pair up "
            "one to one (check that the evaluation split was not truncated or shuffled)."
        )
    if len(preds) == 0:
        raise ConfigError("got no predictions and no references; a metric needs at least one pair.")
    return preds, refs


def accuracy(predictions: Any, references: Any) -> float:
    """Fraction of predictions equal to their reference."""
    preds, refs = _as_pair(predictions, references)
    return float(np.mean(preds == refs))


def f1_binary(predictions: Any, references: Any, positive: Any = 1) -> float:
    """F1 of the `positive` class (sklearn's `f1_score(average="binary")`).

    Args:
        predictions: predicted labels, at most two distinct values together with references.
        references: gold labels.
        positive: the label counted as positive (1 for MRPC and QQP).

    Returns 0.0 when there is no true and no predicted positive.
    """
    preds, refs = _as_pair(predictions, references)
    labels = np.union1d(preds, refs)
    if len(labels) > 2:
        raise ConfigError(
            f"f1 is the binary F1 score but the labels take {len(labels)} values "
            f"({labels.tolist()[:10]}); use 'accuracy' or 'matthews_correlation' for multi-class tasks."
        )
    pred_pos = preds == positive
    ref_pos = refs == positive
    true_pos = int(np.sum(pred_pos & ref_pos))
    false_pos = int(np.sum(pred_pos & ~ref_pos))
    false_neg = int(np.sum(~pred_pos & ref_pos))
    denominator = 2 * true_pos + false_pos + false_neg
    if denominator == 0:
        return 0.0
    return float(2 * true_pos / denominator)


def matthews_correlation(predictions: Any, references: Any) -> float:
    """Matthews correlation coefficient (the multi-class form sklearn uses; CoLA's metric).

    Returns 0.0 when the denominator is 0, e.g. when all predictions are one class.
    """
    preds, refs = _as_pair(predictions, references)
    labels, encoded = np.unique(np.concatenate([refs, preds]), return_inverse=True)
    n = len(refs)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # (true, predicted)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1)
    true_sum = confusion.sum(axis=1, dtype=np.float64)
    pred_sum = confusion.sum(axis=0, dtype=np.float64)
    correct = float(np.trace(confusion))
    samples = float(confusion.sum())
    # Gorodkin's K-category correlation; for two classes it is the usual
    # (TP*TN - FP*FN) / sqrt(...) and it is the formula sklearn implements.
    cov_true_pred = correct * samples - float(np.dot(true_sum, pred_sum))
    cov_pred_pred = samples**2 - float(np.dot(pred_sum, pred_sum))
    cov_true_true = samples**2 - float(np.dot(true_sum, true_sum))
    if cov_pred_pred * cov_true_true == 0:
        return 0.0
    return float(cov_true_pred / math.sqrt(cov_true_true * cov_pred_pred))


def _too_short_for_correlation(preds: np.ndarray, name: str) -> bool:
    """Warn (and say so) when a correlation cannot be defined on fewer than two pairs."""
    if len(preds) >= 2:
        return False
    warnings.warn(
        f"{name} needs at least two pairs, got {len(preds)}; returning nan.",
        RuntimeWarning,
        stacklevel=3,
    )
    return True


def pearson(predictions: Any, references: Any) -> float:
    """Pearson correlation (STS-B), as `scipy.stats.pearsonr`; nan for constant input."""
    preds, refs = _as_pair(predictions, references)
    if _too_short_for_correlation(preds, "pearson"):
        return float("nan")
    return float(stats.pearsonr(preds.astype(np.float64), refs.astype(np.float64)).statistic)


def spearman(predictions: Any, references: Any) -> float:
    """Spearman rank correlation (STS-B), as `scipy.stats.spearmanr`; ties get average ranks."""
    preds, refs = _as_pair(predictions, references)
    if _too_short_for_correlation(preds, "spearman"):
        return float("nan")
    return float(stats.spearmanr(preds.astype(np.float64), refs.astype(np.float64)).statistic)


# Keys are the metric names used in tasks/<name>.toml (choices.GLUE_METRICS, which task files are checked against).
METRIC_FUNCTIONS: dict[str, MetricFunction] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,
}
assert tuple(METRIC_FUNCTIONS) == GLUE_METRICS, "choices.GLUE_METRICS must list exactly the metrics implemented here"


def compute_metrics(metric_names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
    """Compute the named metrics on one set of predictions.

    Args:
        metric_names: keys of `METRIC_FUNCTIONS`, e.g. `["f1", "accuracy"]`.
        predictions: predicted labels (or scores for STS-B), 1-D.
        references: gold labels (or scores), 1-D, same length.

    Returns:
        `{name: value}` in the order asked, each a float on the [0, 1] scale.

    Raises:
        ConfigError: an unknown metric name, no names, or predictions and references
            that are empty or of different lengths.
    """
    if isinstance(metric_names, str):
        raise ConfigError(
            f"metric_names must be a list of names, got the string {metric_names!r}; "
            f"write [{metric_names!r}]."
        )
    if len(metric_names) == 0:
        raise ConfigError(f"no metric names given; choose from {sorted(METRIC_FUNCTIONS)}.")
    unknown = [name for name in metric_names if name not in METRIC_FUNCTIONS]
    if unknown:
        raise ConfigError(
            f"unknown metric name(s) {unknown}; known metrics are {sorted(METRIC_FUNCTIONS)}. "
            "Fix the 'metric' entry of the task file."
        )
    preds, refs = _as_pair(predictions, references)
    return {name: METRIC_FUNCTIONS[name](preds, refs) for name in metric_names}


def task_score(metrics: Mapping[str, float], task_metrics: Sequence[str]) -> float:
    """One number per GLUE task, as the GLUE leaderboard ranks: the mean of the scores the task reports, i.e.
    of `task_metrics` (its task file's `metrics`) on every validation split (MRPC / QQP: accuracy and F1;
    STS-B: Pearson and Spearman; MNLI: matched and mismatched accuracy; CoLA: Matthews correlation), keys as
    `evaluate` writes them (`accuracy`, `accuracy_mismatched`, ...). The GLUE average is the mean of these
    over the GLUE tasks, in train-all, report and its plot alike. NaN when `metrics` holds none of them."""
    values = [float(v) for k, v in metrics.items()
              if (k in task_metrics or any(k.startswith(n + "_") for n in task_metrics))
              and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(values) / len(values) if values else float("nan")
