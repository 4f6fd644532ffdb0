"""Tests for dontstop.metrics: every metric against a direct scikit-learn / numpy computation, plus validation."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from dontstop.metrics import METRICS, TASKS, Metric, constant_prediction, get_metric, score

N_ROWS = 200
N_TARGETS = 3
N_CLASSES = 4


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def make_data(task: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (y_true, y_pred) in the task's shapes, with predictions correlated to the truth."""
    rng = np.random.default_rng(seed)
    if task == "regression":
        y_true = rng.normal(3.0, 1.0, N_ROWS)
        return y_true, y_true + rng.normal(0, 0.7, N_ROWS)
    if task == "multi_target_regression":
        y_true = rng.normal(3.0, 1.0, (N_ROWS, N_TARGETS))
        noise_scale = np.array([0.3, 0.7, 1.2])  # different per column so mcrmse != rmse
        return y_true, y_true + rng.normal(0, 1, (N_ROWS, N_TARGETS)) * noise_scale
    if task == "binary":
        y_true = rng.integers(0, 2, N_ROWS)
        return y_true, 1 / (1 + np.exp(-(2 * y_true - 1 + rng.normal(0, 1.5, N_ROWS))))
    if task == "multiclass":
        y_true = rng.integers(0, N_CLASSES, N_ROWS)
        logits = rng.normal(0, 1.5, (N_ROWS, N_CLASSES))
        logits[np.arange(N_ROWS), y_true] += 1.0
        return y_true, _softmax(logits)
    y_true = rng.integers(0, 2, (N_ROWS, N_TARGETS))
    return y_true, 1 / (1 + np.exp(-(2 * y_true - 1 + rng.normal(0, 1.5, (N_ROWS, N_TARGETS)))))


def _pearson_reference(y_true, y_pred):
    y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    return np.mean([np.corrcoef(y_true[:, j], y_pred[:, j])[0, 1] for j in range(y_true.shape[1])])


def _regression_qwk_reference(y_true, y_pred):
    true_classes = np.rint(y_true).astype(int)
    pred_classes = np.clip(np.rint(y_pred), true_classes.min(), true_classes.max()).astype(int)
    return cohen_kappa_score(true_classes, pred_classes, weights="quadratic")


LABELS = list(range(N_CLASSES))
# (metric, task) -> reference computed straight from scikit-learn / numpy.
REFERENCES = {
    ("rmse", "regression"): lambda t, p: root_mean_squared_error(t, p),
    ("rmse", "multi_target_regression"): lambda t, p: np.sqrt(np.mean((t - p) ** 2)),
    ("mcrmse", "regression"): lambda t, p: root_mean_squared_error(t, p),
    ("mcrmse", "multi_target_regression"): lambda t, p: np.mean(
        [root_mean_squared_error(t[:, j], p[:, j]) for j in range(t.shape[1])]),
    ("mae", "regression"): lambda t, p: mean_absolute_error(t, p),
    ("mae", "multi_target_regression"): lambda t, p: mean_absolute_error(t, p),
    ("pearson", "regression"): _pearson_reference,
    ("pearson", "multi_target_regression"): _pearson_reference,
    ("auc", "binary"): lambda t, p: roc_auc_score(t, p),
    ("auc", "multiclass"): lambda t, p: roc_auc_score(t, p, multi_class="ovr", average="macro", labels=LABELS),
    ("auc", "multilabel"): lambda t, p: roc_auc_score(t, p, average="macro"),
    ("logloss", "binary"): lambda t, p: log_loss(t, p),
    ("logloss", "multiclass"): lambda t, p: log_loss(t, p, labels=LABELS),
    ("logloss", "multilabel"): lambda t, p: -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)),
    ("accuracy", "binary"): lambda t, p: accuracy_score(t, p >= 0.5),
    ("accuracy", "multiclass"): lambda t, p: accuracy_score(t, p.argmax(axis=1)),
    ("accuracy", "multilabel"): lambda t, p: np.mean(np.all(t == (p >= 0.5), axis=1)),
    ("f1", "binary"): lambda t, p: f1_score(t, p >= 0.5),
    ("macro_f1", "binary"): lambda t, p: f1_score(t, p >= 0.5, average="macro"),
    ("macro_f1", "multiclass"): lambda t, p: f1_score(t, p.argmax(axis=1), average="macro", labels=LABELS),
    ("macro_f1", "multilabel"): lambda t, p: f1_score(t, (p >= 0.5).astype(int), average="macro"),
    ("qwk", "multiclass"): lambda t, p: cohen_kappa_score(t, p.argmax(axis=1), weights="quadratic"),
    ("qwk", "regression"): _regression_qwk_reference,
}


def test_every_supported_pair_has_a_reference():
    supported = {(m.name, task) for m in METRICS.values() for task in m.tasks}
    assert supported == set(REFERENCES)
    assert all(task in TASKS for _, task in supported)


@pytest.mark.parametrize("name,task", sorted(REFERENCES))
def test_metric_matches_reference(name, task):
    y_true, y_pred = make_data(task, seed=zlib.crc32(f"{name}/{task}".encode()))  # stable across runs
    expected = REFERENCES[(name, task)](y_true, y_pred)
    got = score(name, task, y_true, y_pred)
    assert isinstance(got, float)
    assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name,task", sorted(REFERENCES))
def test_perfect_prediction_beats_no_skill_constant(name, task):
    y_true, _ = make_data(task, seed=7)
    metric = get_metric(name, task)
    if task == "multiclass":
        perfect = np.eye(N_CLASSES)[y_true]
    else:
        perfect = y_true.astype(float)
    n_classes = N_CLASSES if task == "multiclass" else None
    const = constant_prediction(task, y_true, len(y_true), n_classes=n_classes)
    perfect_score = score(name, task, y_true, perfect)
    const_score = score(name, task, y_true, const)
    if metric.greater_is_better:
        assert perfect_score > const_score
    else:
        assert perfect_score < const_score
    if name in ("rmse", "mcrmse", "mae"):
        assert perfect_score == 0.0


def test_greater_is_better_flags():
    expected = {"rmse": False, "mcrmse": False, "mae": False, "logloss": False,
                "pearson": True, "auc": True, "accuracy": True, "f1": True, "macro_f1": True, "qwk": True}
    assert {name: m.greater_is_better for name, m in METRICS.items()} == expected


def test_uses_labels_flags():
    assert {name for name, m in METRICS.items() if m.uses_labels} == {"accuracy", "f1", "macro_f1", "qwk"}


def test_metric_is_frozen_and_named_by_its_key():
    for name, metric in METRICS.items():
        assert isinstance(metric, Metric) and metric.name == name
    with pytest.raises(AttributeError):
        METRICS["rmse"].name = "other"  # type: ignore[misc]


def test_get_metric_returns_metric():
    assert get_metric("auc", "multilabel") is METRICS["auc"]


def test_get_metric_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown metric 'rsme'.*'regression'.*'rmse'"):
        get_metric("rsme", "regression")


def test_get_metric_wrong_task_names_metric_task_and_choices():
    with pytest.raises(ValueError, match=r"'rmse' does not fit task 'multiclass'.*'logloss'"):
        get_metric("rmse", "multiclass")
    with pytest.raises(ValueError, match=r"'f1' does not fit task 'multilabel'"):
        get_metric("f1", "multilabel")


def test_get_metric_unknown_task():
    with pytest.raises(ValueError, match=r"unknown task 'ranking'"):
        get_metric("rmse", "ranking")


def test_score_rejects_nan_and_counts_them():
    y_true, y_pred = make_data("regression")
    y_pred[[3, 10, 50]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(ValueError, match=r"y_pred holds 3 NaN/inf"):
        score("rmse", "regression", y_true, y_pred)


@pytest.mark.parametrize("task,name,true_shape,pred_shape", [
    ("regression", "rmse", (10,), (9,)),
    ("regression", "rmse", (10,), (10, 2)),
    ("multi_target_regression", "mcrmse", (10, 3), (10, 2)),
    ("multi_target_regression", "mcrmse", (10,), (10,)),
    ("binary", "auc", (10,), (10, 2)),
    ("multiclass", "logloss", (10,), (10,)),
    ("multiclass", "logloss", (10,), (9, 4)),
    ("multilabel", "auc", (10, 3), (10, 4)),
])
def test_score_rejects_wrong_shapes_naming_both(task, name, true_shape, pred_shape):
    y_true = np.zeros(true_shape)
    y_pred = np.full(pred_shape, 0.25)
    with pytest.raises(ValueError, match=rf"{task}: expected .* got y_true {re_shape(true_shape)} "
                                         rf"and y_pred {re_shape(pred_shape)}"):
        score(name, task, y_true, y_pred)


def re_shape(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_score_accepts_single_column_arrays():
    y_true, y_pred = make_data("regression")
    assert score("rmse", "regression", y_true[:, None], y_pred[:, None]) == pytest.approx(
        root_mean_squared_error(y_true, y_pred))
    y_true, y_pred = make_data("binary")
    assert score("auc", "binary", y_true[:, None], y_pred[:, None]) == pytest.approx(roc_auc_score(y_true, y_pred))


def test_score_rejects_logits_and_bad_labels():
    y_true, y_pred = make_data("binary")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        score("auc", "binary", y_true, y_pred * 4 - 2)
    with pytest.raises(ValueError, match=r"y_true must be 0/1; 1 value"):
        score("auc", "binary", np.where(np.arange(N_ROWS) == 0, 2, y_true), y_pred)
    y_true, y_pred = make_data("multiclass")
    with pytest.raises(ValueError, match=r"summing to 1.*200 of 200 rows"):
        score("logloss", "multiclass", y_true, y_pred * 0.5)
    with pytest.raises(ValueError, match=r"class indices 0..3"):
        score("logloss", "multiclass", np.where(np.arange(N_ROWS) == 0, 4, y_true), y_pred)


def test_undefined_metric_raises_instead_of_nan():
    with pytest.raises(ValueError, match=r"single class"):
        score("auc", "binary", np.ones(5), np.linspace(0.1, 0.9, 5))
    with pytest.raises(ValueError, match=r"every label has a single class"):
        score("auc", "multilabel", np.ones((5, 2)), np.full((5, 2), 0.3))
    with pytest.raises(ValueError, match=r"classes \[3\] never occur"):
        score("auc", "multiclass", np.array([0, 1, 2, 0]), np.full((4, 4), 0.25))


def test_multilabel_auc_skips_single_class_labels():
    y_true, y_pred = make_data("multilabel")
    y_true[:, 1] = 1
    expected = np.mean([roc_auc_score(y_true[:, j], y_pred[:, j]) for j in (0, 2)])
    assert score("auc", "multilabel", y_true, y_pred) == pytest.approx(expected)


def test_mcrmse_is_mean_of_column_rmse_and_differs_from_rmse():
    y_true, y_pred = make_data("multi_target_regression")
    column_rmse = np.sqrt(((y_true - y_pred) ** 2).mean(axis=0))
    mcrmse = score("mcrmse", "multi_target_regression", y_true, y_pred)
    assert mcrmse == pytest.approx(column_rmse.mean())
    # sqrt of a mean exceeds the mean of sqrts when columns differ (Jensen), so the two must not coincide.
    assert score("rmse", "multi_target_regression", y_true, y_pred) > mcrmse + 1e-3


def test_pearson_constant_column_counts_zero():
    y_true = np.column_stack([np.arange(10.0), np.arange(10.0)])
    y_pred = np.column_stack([np.arange(10.0) * 2 + 1, np.full(10, 3.0)])
    assert score("pearson", "multi_target_regression", y_true, y_pred) == pytest.approx(0.5)


def test_qwk_regression_rounds_and_clips_into_true_range():
    y_true = np.array([1.0, 2.0, 3.0, 4.0, 1.2])
    y_pred = np.array([0.2, 2.4, 2.6, 9.0, 1.4])  # -> rounded 0,2,3,9,1 -> clipped 1,2,3,4,1
    assert score("qwk", "regression", y_true, y_pred) == pytest.approx(1.0)
    y_pred_off = np.array([2.0, 2.0, 3.0, 4.0, 1.0])
    expected = cohen_kappa_score([1, 2, 3, 4, 1], [2, 2, 3, 4, 1], weights="quadratic")
    assert expected < 1.0
    assert score("qwk", "regression", y_true, y_pred_off) == pytest.approx(expected)


def test_logloss_clips_hard_zero_probabilities():
    got = score("logloss", "binary", np.array([1, 0]), np.array([0.0, 0.0]))
    assert got == pytest.approx(-np.log(1e-15) / 2, rel=1e-6)


def test_constant_prediction_values_and_shapes():
    y = np.array([1.0, 2.0, 6.0])
    np.testing.assert_allclose(constant_prediction("regression", y, 4), np.full(4, 3.0))
    np.testing.assert_allclose(constant_prediction("regression", y[:, None], 2), [3.0, 3.0])

    y = np.array([[1.0, 10.0], [3.0, 20.0]])
    np.testing.assert_allclose(constant_prediction("multi_target_regression", y, 3), [[2.0, 15.0]] * 3)

    np.testing.assert_allclose(constant_prediction("binary", np.array([0, 1, 1, 1]), 2), [0.75, 0.75])

    prior = constant_prediction("multiclass", np.array([0, 2, 2, 1]), 3)
    np.testing.assert_allclose(prior, [[0.25, 0.25, 0.5]] * 3)
    wider = constant_prediction("multiclass", np.array([0, 1, 1, 1]), 1, n_classes=3)
    np.testing.assert_allclose(wider, [[0.25, 0.75, 0.0]])

    y = np.array([[1, 0, 0], [1, 1, 0]])
    np.testing.assert_allclose(constant_prediction("multilabel", y, 2), [[1.0, 0.5, 0.0]] * 2)


def test_constant_prediction_rejects_bad_input():
    with pytest.raises(ValueError, match=r"unknown task"):
        constant_prediction("ranking", np.zeros(3), 2)
    with pytest.raises(ValueError, match=r"empty"):
        constant_prediction("regression", np.zeros(0), 2)
    with pytest.raises(ValueError, match=r"class indices 0..1"):
        constant_prediction("multiclass", np.array([0, 1, 2]), 2, n_classes=2)
    with pytest.raises(ValueError, match=r"expected y_train \(n, columns\)"):
        constant_prediction("multilabel", np.zeros(3), 2)
