"""Competition metrics for Kaggle NLP tasks, and the no-skill baseline to compare them against.

Pure functions, no file I/O. Every stage that scores predictions (train, ensemble, compare, pseudo) goes through
`score(name, task, y_true, y_pred)`, which checks shapes and values first, so a wrong-shaped out-of-fold array
fails with a message that says what was expected instead of producing a silently wrong number.

Shapes (y_true, y_pred) per task:
    regression               (n,)            (n,)      floats; (n, 1) is accepted and squeezed
    multi_target_regression  (n, T)          (n, T)    floats
    binary                   (n,) in {0, 1}  (n,)      probability of class 1; (n, 1) is accepted
    multiclass               (n,) in 0..C-1  (n, C)    class probabilities
    multilabel               (n, L) in {0,1} (n, L)    per-label probabilities

Where scikit-learn implements a metric we call it rather than re-deriving it, so our numbers match the ones
Kagglers compute in notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

TASKS = ("regression", "multi_target_regression", "binary", "multiclass", "multilabel")
REGRESSION_TASKS = ("regression", "multi_target_regression")
PROBABILITY_TASKS = ("binary", "multiclass", "multilabel")

# Kaggle's log-loss convention: clip probabilities away from 0 and 1 so one confident mistake costs ~34.5, not inf.
LOGLOSS_EPS = 1e-15
# Hard labels from probabilities: the usual Kaggle convention for binary and multilabel submissions.
THRESHOLD = 0.5
# Slack for probabilities that left float32 softmax/sigmoid a hair outside [0, 1] or off a row sum of 1.
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Metric:
    name: str
    greater_is_better: bool
    tasks: tuple[str, ...]  # tasks this metric fits
    uses_labels: bool  # scores hard labels, so a submission should hold labels rather than probabilities
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y_true, y_pred) in the task's shapes -> float


# --- helpers -------------------------------------------------------------------------------------------------


def _as_columns(y: np.ndarray) -> np.ndarray:
    """View a single-target array as one column, so per-column metrics treat (n,) and (n, T) alike."""
    return y.reshape(-1, 1) if y.ndim == 1 else y


def _normalized_rows(y_pred: np.ndarray) -> np.ndarray:
    """Divide each multiclass row by its sum, as Kaggle does before scoring (float32 softmax rarely sums to 1)."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    return y_pred / y_pred.sum(axis=1, keepdims=True)


def _binary_labels(y_pred: np.ndarray) -> np.ndarray:
    """Probabilities -> 0/1 labels at the 0.5 threshold, for binary (n,) and multilabel (n, L)."""
    return (y_pred >= THRESHOLD).astype(int)


def _is_multiclass(y_true: np.ndarray, y_pred: np.ndarray) -> bool:
    # The task is recoverable from the shapes: only multiclass pairs a 1-D y_true with a 2-D y_pred.
    return y_true.ndim == 1 and y_pred.ndim == 2


# --- regression ----------------------------------------------------------------------------------------------


def _mcrmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean column-wise RMSE (Feedback Prize ELL); equals RMSE when there is one target."""
    return float(root_mean_squared_error(_as_columns(y_true), _as_columns(y_pred), multioutput="raw_values").mean())


def _rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """RMSE over every cell; for several targets this differs from mcrmse (sqrt of a mean vs mean of sqrts)."""
    return float(root_mean_squared_error(y_true.ravel(), y_pred.ravel()))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(mean_absolute_error(y_true, y_pred))


def _pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson r per column, averaged; a constant column counts 0 (no linear skill) instead of NaN."""
    per_column = []
    for true_col, pred_col in zip(_as_columns(y_true).T, _as_columns(y_pred).T):
        if np.ptp(true_col) == 0 or np.ptp(pred_col) == 0:
            per_column.append(0.0)
        else:
            per_column.append(float(np.corrcoef(true_col, pred_col)[0, 1]))
    return float(np.mean(per_column))


# --- classification ------------------------------------------------------------------------------------------


def _auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if _is_multiclass(y_true, y_pred):
        n_classes = y_pred.shape[1]
        absent = sorted(set(range(n_classes)) - set(y_true.astype(int).tolist()))
        if absent:
            raise ValueError(f"auc (multiclass) is undefined: classes {absent} never occur in y_true")
        return float(roc_auc_score(y_true, _normalized_rows(y_pred), multi_class="ovr", average="macro",
                                   labels=list(range(n_classes))))
    if y_true.ndim == 2:  # multilabel: a label with one class in y_true has no AUC, so it is left out
        valid = [j for j in range(y_true.shape[1]) if np.unique(y_true[:, j]).size == 2]
        if not valid:
            raise ValueError("auc (multilabel) is undefined: every label has a single class in y_true")
        return float(np.mean([roc_auc_score(y_true[:, j], y_pred[:, j]) for j in valid]))
    if np.unique(y_true).size < 2:
        raise ValueError("auc (binary) is undefined: y_true holds a single class")
    return float(roc_auc_score(y_true, y_pred))


def _logloss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if _is_multiclass(y_true, y_pred):
        clipped = np.clip(_normalized_rows(y_pred), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        return float(log_loss(y_true, clipped, labels=list(range(y_pred.shape[1]))))
    clipped = np.clip(y_pred, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    if y_true.ndim == 2:  # multilabel: binary cross-entropy per label, averaged over labels
        return float(np.mean([log_loss(y_true[:, j], clipped[:, j], labels=[0, 1])
                              for j in range(y_true.shape[1])]))
    return float(log_loss(y_true, clipped, labels=[0, 1]))


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # For multilabel, sklearn's accuracy on (n, L) indicator arrays is exact-match (subset) accuracy.
    if _is_multiclass(y_true, y_pred):
        return float(accuracy_score(y_true, y_pred.argmax(axis=1)))
    return float(accuracy_score(y_true.astype(int), _binary_labels(y_pred)))


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true.astype(int), _binary_labels(y_pred), pos_label=1, zero_division=0))


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if _is_multiclass(y_true, y_pred):
        labels = list(range(y_pred.shape[1]))
        return float(f1_score(y_true, y_pred.argmax(axis=1), labels=labels, average="macro", zero_division=0))
    if y_true.ndim == 2:  # multilabel
        return float(f1_score(y_true.astype(int), _binary_labels(y_pred), average="macro", zero_division=0))
    return float(f1_score(y_true.astype(int), _binary_labels(y_pred), labels=[0, 1], average="macro",
                          zero_division=0))


def _qwk(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Quadratic weighted kappa on integer classes.

    Multiclass scores the argmax class. Regression (essay-scoring style) rounds both sides and clips the
    predictions into y_true's range, since a score of 7 on a 1..6 scale is what a submission would round to 6.
    """
    if _is_multiclass(y_true, y_pred):
        labels = list(range(y_pred.shape[1]))
        return float(cohen_kappa_score(y_true.astype(int), y_pred.argmax(axis=1), labels=labels,
                                       weights="quadratic"))
    true_classes = np.rint(y_true).astype(int)
    low, high = int(true_classes.min()), int(true_classes.max())
    pred_classes = np.clip(np.rint(y_pred), low, high).astype(int)
    return float(cohen_kappa_score(true_classes, pred_classes, labels=list(range(low, high + 1)),
                                   weights="quadratic"))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("rmse", False, REGRESSION_TASKS, False, _rmse),
        Metric("mcrmse", False, REGRESSION_TASKS, False, _mcrmse),
        Metric("mae", False, REGRESSION_TASKS, False, _mae),
        Metric("pearson", True, REGRESSION_TASKS, False, _pearson),
        Metric("auc", True, PROBABILITY_TASKS, False, _auc),
        Metric("logloss", False, PROBABILITY_TASKS, False, _logloss),
        Metric("accuracy", True, PROBABILITY_TASKS, True, _accuracy),
        Metric("f1", True, ("binary",), True, _f1),
        Metric("macro_f1", True, PROBABILITY_TASKS, True, _macro_f1),
        Metric("qwk", True, ("regression", "multiclass"), True, _qwk),
    )
}


def get_metric(name: str, task: str) -> Metric:
    """The metric called `name`, checked to fit `task`; ValueError listing the valid choices otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (for metric {name!r}); choose one of {list(TASKS)}")
    fitting = [m.name for m in METRICS.values() if task in m.tasks]
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r} for task {task!r}; metrics for {task!r}: {fitting}")
    metric = METRICS[name]
    if task not in metric.tasks:
        raise ValueError(f"metric {name!r} does not fit task {task!r} (it fits {list(metric.tasks)}); "
                         f"metrics for {task!r}: {fitting}")
    return metric


# --- validation ----------------------------------------------------------------------------------------------


def _squeeze_single_column(y: np.ndarray) -> np.ndarray:
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


def _check_shapes(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (y_true, y_pred) in the task's canonical shapes, or raise naming expected and actual shapes."""
    if task in ("regression", "binary"):
        y_true, y_pred = _squeeze_single_column(y_true), _squeeze_single_column(y_pred)
        expected_true, expected_pred = "(n,)", "(n,)"
        ok = y_true.ndim == 1 and y_pred.shape == y_true.shape
    elif task == "multiclass":
        y_true = _squeeze_single_column(y_true)
        expected_true, expected_pred = "(n,) class indices", "(n, C) probabilities with C >= 2"
        ok = y_true.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[0] == y_true.shape[0] and y_pred.shape[1] >= 2
    else:  # multi_target_regression, multilabel
        expected_true = expected_pred = "(n, T)" if task == "multi_target_regression" else "(n, L)"
        ok = y_true.ndim == 2 and y_pred.shape == y_true.shape
    if not ok:
        raise ValueError(f"{task}: expected y_true {expected_true} and y_pred {expected_pred} with the same n; "
                         f"got y_true {y_true.shape} and y_pred {y_pred.shape}")
    if y_true.shape[0] == 0:
        raise ValueError(f"{task}: cannot score zero rows")
    return y_true, y_pred


def _check_values(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    """Reject NaN/inf and labels or probabilities outside what the task allows, saying how many cells are bad."""
    for what, array in (("y_pred", y_pred), ("y_true", y_true)):
        n_bad = int((~np.isfinite(array)).sum())
        if n_bad:
            raise ValueError(f"{task}: {what} holds {n_bad} NaN/inf value(s) out of {array.size}")
    if task in ("binary", "multilabel"):
        bad = ~np.isin(y_true, (0, 1))
        if bad.any():
            raise ValueError(f"{task}: y_true must be 0/1; {int(bad.sum())} value(s) are not, e.g. {y_true[bad][0]!r}")
    if task == "multiclass":
        n_classes = y_pred.shape[1]
        bad = (y_true != np.rint(y_true)) | (y_true < 0) | (y_true >= n_classes)
        if bad.any():
            raise ValueError(f"multiclass: y_true must be class indices 0..{n_classes - 1} to match y_pred's "
                             f"{n_classes} columns; {int(bad.sum())} value(s) are not, e.g. {y_true[bad][0]!r}")
        row_sums = y_pred.sum(axis=1)
        off = np.abs(row_sums - 1) > PROBABILITY_TOLERANCE
        if off.any():
            raise ValueError(f"multiclass: y_pred rows must be probabilities summing to 1 (apply softmax); "
                             f"{int(off.sum())} of {len(row_sums)} rows do not, e.g. row {int(np.argmax(off))} "
                             f"sums to {row_sums[off][0]:.4f}")
    if task in PROBABILITY_TASKS:
        low, high = float(y_pred.min()), float(y_pred.max())
        if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
            raise ValueError(f"{task}: y_pred must be probabilities in [0, 1] (apply sigmoid/softmax to logits); "
                             f"got min {low:.4g}, max {high:.4g}")


def score(name: str, task: str, y_true, y_pred) -> float:
    """Score predictions with metric `name` for `task`, after checking shapes and values."""
    metric = get_metric(name, task)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true, y_pred = _check_shapes(task, y_true, y_pred)
    _check_values(task, y_true, y_pred)
    if task in PROBABILITY_TASKS:
        y_pred = np.clip(y_pred, 0.0, 1.0)  # float32 round-off; sklearn rejects a probability of 1.0000001
        y_true = y_true.astype(int)
    value = metric.fn(y_true, y_pred)
    if not np.isfinite(value):
        raise ValueError(f"metric {name!r} is undefined for this {task} data (got {value}); "
                         f"y_true probably holds a single class or value")
    return value


def constant_prediction(task: str, y_train: np.ndarray, n_rows: int, n_classes: int | None = None) -> np.ndarray:
    """The no-skill prediction for `n_rows` rows, in the task's y_pred shape.

    Train mean per target for regression, positive rate per label for binary/multilabel, class frequencies for
    multiclass. `n_classes` only matters for multiclass, when the training labels miss the highest classes.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    y_train = np.asarray(y_train, dtype=np.float64)
    if y_train.shape[0] == 0:
        raise ValueError(f"{task}: y_train is empty, there is no prior to predict")
    if task in ("regression", "binary"):
        y_train = _squeeze_single_column(y_train)
        if y_train.ndim != 1:
            raise ValueError(f"{task}: expected y_train (n,), got {y_train.shape}")
        return np.full(n_rows, y_train.mean())
    if task == "multiclass":
        y_train = _squeeze_single_column(y_train).astype(int)
        n_classes = int(y_train.max()) + 1 if n_classes is None else n_classes
        if y_train.ndim != 1 or y_train.min() < 0 or y_train.max() >= n_classes:
            raise ValueError(f"multiclass: expected y_train (n,) class indices 0..{n_classes - 1}, "
                             f"got shape {y_train.shape} with values {y_train.min()}..{y_train.max()}")
        prior = np.bincount(y_train, minlength=n_classes) / len(y_train)
        return np.tile(prior, (n_rows, 1))
    if y_train.ndim != 2:
        raise ValueError(f"{task}: expected y_train (n, columns), got {y_train.shape}")
    return np.tile(y_train.mean(axis=0), (n_rows, 1))
