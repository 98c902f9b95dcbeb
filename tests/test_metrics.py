"""GLUE metrics against scikit-learn / scipy, hand-worked values and edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from roberta_lora.errors import ConfigError
from roberta_lora.evaluation.metrics import (
    METRIC_FUNCTIONS,
    accuracy,
    compute_metrics,
    f1_binary,
    matthews_correlation,
    pearson,
    spearman,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _sklearn_quiet(function, *args, **kwargs):
    """Call sklearn without its 'ill-defined' warnings (the value is what we compare)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("seed", range(20))
def test_classification_metrics_equal_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    refs = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, refs, 1 - refs)  # mostly right, like a model
    assert accuracy(preds, refs) == pytest.approx(sklearn_metrics.accuracy_score(refs, preds), abs=1e-15)
    assert f1_binary(preds, refs) == pytest.approx(
        _sklearn_quiet(sklearn_metrics.f1_score, refs, preds), abs=1e-15
    )
    assert matthews_correlation(preds, refs) == pytest.approx(
        _sklearn_quiet(sklearn_metrics.matthews_corrcoef, refs, preds), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(10))
def test_multiclass_mcc_and_accuracy_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    refs = rng.integers(0, 3, 50)
    preds = np.where(rng.random(50) < 0.5, refs, rng.integers(0, 3, 50))
    assert matthews_correlation(preds, refs) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(refs, preds), abs=1e-12
    )
    assert accuracy(preds, refs) == pytest.approx(sklearn_metrics.accuracy_score(refs, preds))


@pytest.mark.parametrize("seed", range(10))
def test_correlations_equal_scipy_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    refs = rng.uniform(0, 5, 40)
    preds = refs + rng.normal(0, 1.0, 40)
    assert pearson(preds, refs) == pytest.approx(stats.pearsonr(preds, refs).statistic, abs=1e-15)
    assert spearman(preds, refs) == pytest.approx(stats.spearmanr(preds, refs).statistic, abs=1e-15)


def test_hand_worked_binary_case() -> None:
    # tp = 2, fp = 1, fn = 1, tn = 0
    preds, refs = [1, 0, 1, 1], [1, 1, 1, 0]
    assert accuracy(preds, refs) == 0.5
    assert f1_binary(preds, refs) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_correlation(preds, refs) == pytest.approx((2 * 0 - 1 * 1) / math.sqrt(3 * 3 * 1 * 1))
    assert f1_binary(preds, refs, positive=0) == 0.0  # class 0: tp = 0


def test_f1_with_string_labels_and_chosen_positive() -> None:
    preds = ["yes", "no", "yes", "yes"]
    refs = ["yes", "yes", "no", "yes"]
    assert f1_binary(preds, refs, positive="yes") == pytest.approx(
        sklearn_metrics.f1_score(refs, preds, pos_label="yes")
    )


def test_mcc_is_zero_when_one_class_everywhere() -> None:
    assert matthews_correlation([1, 1, 1], [1, 1, 1]) == 0.0
    assert matthews_correlation([0, 0, 0, 0], [1, 0, 1, 0]) == 0.0  # constant predictions
    assert matthews_correlation([1, 0, 1, 0], [1, 1, 1, 1]) == 0.0  # constant references
    assert _sklearn_quiet(sklearn_metrics.matthews_corrcoef, [1, 0, 1, 0], [0, 0, 0, 0]) == 0.0


def test_mcc_is_one_and_minus_one_at_the_extremes() -> None:
    assert matthews_correlation([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_correlation([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_f1_without_any_positive_is_zero_like_sklearn() -> None:
    assert f1_binary([0, 0], [0, 0]) == 0.0
    assert _sklearn_quiet(sklearn_metrics.f1_score, [0, 0], [0, 0]) == 0.0


def test_f1_refuses_more_than_two_classes() -> None:
    with pytest.raises(ConfigError, match="binary F1"):
        f1_binary([0, 1, 2], [0, 1, 2])


def test_spearman_with_ties_uses_average_ranks() -> None:
    # ranks of x: 1, 2.5, 2.5, 4; worked by hand: 4.5 / sqrt(4.5 * 5)
    value = spearman([1, 2, 2, 3], [1, 2, 3, 4])
    assert value == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert value == pytest.approx(stats.spearmanr([1, 2, 2, 3], [1, 2, 3, 4]).statistic, abs=1e-15)


@pytest.mark.parametrize("function", [pearson, spearman])
def test_constant_input_gives_nan_with_scipys_warning(function) -> None:
    with pytest.warns(stats.ConstantInputWarning):
        value = function([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(value)


@pytest.mark.parametrize("function", [pearson, spearman])
def test_single_pair_gives_nan_instead_of_raising(function) -> None:
    with pytest.warns(RuntimeWarning, match="at least two pairs"):
        assert math.isnan(function([1.0], [2.0]))


def test_inputs_may_be_lists_arrays_or_tensors() -> None:
    torch = pytest.importorskip("torch")
    preds, refs = torch.tensor([1, 0, 1]), np.array([1, 1, 1])
    assert accuracy(preds, refs) == pytest.approx(2 / 3)
    assert pearson(torch.tensor([0.1, 0.5, 0.9]), [1, 2, 3]) == pytest.approx(1.0)


def test_compute_metrics_returns_plain_floats_in_the_order_asked() -> None:
    result = compute_metrics(["f1", "accuracy"], np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]))
    assert list(result) == ["f1", "accuracy"]
    assert all(type(value) is float for value in result.values())
    assert result == {"f1": pytest.approx(2 / 3), "accuracy": 0.5}
    stsb = compute_metrics(["pearson", "spearmanr"], [0.1, 0.4, 0.3], [1.0, 3.0, 2.0])
    assert all(type(value) is float for value in stsb.values())
    assert stsb["spearmanr"] == pytest.approx(1.0)


def test_metric_table_has_the_task_file_names() -> None:
    assert set(METRIC_FUNCTIONS) == {"accuracy", "f1", "matthews_correlation", "pearson", "spearmanr"}


def test_unknown_metric_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'mcc'.*matthews_correlation"):
        compute_metrics(["mcc"], [1], [1])


@pytest.mark.parametrize(
    ("names", "preds", "refs", "message"),
    [
        (["accuracy"], [1, 0], [1], "2 predictions but 1 references"),
        (["accuracy"], [], [], "at least one pair"),
        (["accuracy"], [[1, 0]], [[1, 0]], "1-D"),
        ("accuracy", [1], [1], "list of names"),
        ([], [1], [1], "no metric names"),
    ],
)
def test_compute_metrics_rejects_bad_input(names, preds, refs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compute_metrics(names, preds, refs)


def test_task_score_is_the_mean_of_the_scores_the_task_reports() -> None:
    from roberta_lora.evaluation.metrics import task_score

    assert task_score({"accuracy": 0.8, "f1": 0.9}, ["accuracy", "f1"]) == pytest.approx(0.85)  # MRPC, QQP
    assert task_score({"accuracy": 0.8, "accuracy_mismatched": 0.7}, ["accuracy"]) == pytest.approx(0.75)  # MNLI
    assert task_score({"pearson": 0.5, "spearmanr": 0.7}, ["pearson", "spearmanr"]) == pytest.approx(0.6)
    assert task_score({"matthews_correlation": 0.3, "accuracy": 0.9}, ["matthews_correlation"]) == 0.3  # CoLA
    assert math.isnan(task_score({"loss": 0.1}, ["accuracy"]))
