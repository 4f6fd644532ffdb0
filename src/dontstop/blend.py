"""Blend K members' out-of-fold predictions into one: the recipe's last step.

Pure functions, no file I/O (`dontstop.ensemble` reads the members' OOF files and writes the results). Member
predictions come stacked as `preds` of shape (K, n, *out), each member in its task's y_pred shape (see
`dontstop.metrics`). `fit_blend` returns a JSON-serialisable description that `apply_blend` re-applies to OOF or
test predictions without pickle. `nested_cv` scores a blend honestly, fitting the blend for fold k on the other
folds' rows only, because weights fitted and scored on the same OOF rows flatter the ensemble.

Methods:
    hill_climb    Caruana et al. 2004 greedy forward selection with replacement; weights = selection counts
    optimize      SLSQP on the metric over the simplex (non-negative weights summing to 1)
    rank_average  mean of per-member ranks scaled to [0, 1]; for rank metrics such as AUC
    stack         ridge (regression) or logistic regression (classification) on the member predictions
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit, softmax
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, RidgeCV

from dontstop.metrics import REGRESSION_TASKS, get_metric, score

METHODS = ("hill_climb", "optimize", "rank_average", "stack")
PER_TARGET_TASKS = ("multi_target_regression", "multilabel")
# Metrics that are flat almost everywhere in the weights (ranks, thresholds): SLSQP's finite-difference gradient
# is zero there, so `optimize` also tries hill climbing and keeps the better.
NON_SMOOTH_METRICS = ("auc", "accuracy", "f1", "macro_f1", "qwk")
# Keeps a member's probability of exactly 0 or 1 from becoming an infinite stacking feature (logit(1e-6) ~ -13.8).
STACK_EPS = 1e-6
# Ridge penalties RidgeCV picks from by leave-one-out; the features are member predictions on the target's scale.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
# Inverse L2 strength of the logistic stackers: a few logit features per label, thousands of rows.
LOGISTIC_C = 1.0
_OUT_SHAPE = {"regression": "", "binary": "", "multiclass": ", C", "multi_target_regression": ", T",
              "multilabel": ", L"}


# --- validation and small helpers ----------------------------------------------------------------------------


def _check_preds(preds) -> np.ndarray:
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim < 2 or preds.shape[0] < 1:
        raise ValueError(f"preds must be (K, n, *out) with K >= 1 members; got shape {preds.shape}")
    for member, member_preds in enumerate(preds):
        n_bad = int((~np.isfinite(member_preds)).sum())
        if n_bad:
            raise ValueError(f"member {member} holds {n_bad} NaN/inf prediction(s) out of {member_preds.size}")
    return preds


def _check_inputs(preds, y, metric: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(preds, y) as float arrays, or ValueError naming the bad member, metric or shapes."""
    get_metric(metric, task)
    preds = _check_preds(preds)
    y = np.asarray(y, dtype=np.float64)
    n_rows = y.shape[0] if y.ndim else -1
    if task in ("regression", "binary"):
        ok = y.ndim == 1 and preds.shape[1:] == y.shape
    elif task == "multiclass":
        ok = y.ndim == 1 and preds.ndim == 3 and preds.shape[1] == n_rows and preds.shape[2] >= 2
    else:
        ok = y.ndim == 2 and preds.shape[1:] == y.shape
    if not ok:
        raise ValueError(f"{task}: expected preds (K, n{_OUT_SHAPE[task]}) matching y of shape {y.shape}; "
                         f"got preds {preds.shape}")
    return preds, y


def _loss(metric: str, task: str, y: np.ndarray):
    """pred -> metric value signed so that lower is better."""
    sign = -1.0 if get_metric(metric, task).greater_is_better else 1.0
    return lambda pred: sign * score(metric, task, y, pred)


def _simplex(weights: np.ndarray) -> np.ndarray:
    """Clip an optimiser's weights to >= 0 (dropping round-off crumbs) and rescale them to sum to 1."""
    weights = np.where(weights < 1e-9, 0.0, weights)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1 / len(weights))


def _columns(preds: np.ndarray) -> np.ndarray:
    """(K, n) -> (K, n, 1), so single- and multi-column predictions share one code path."""
    return preds[..., None] if preds.ndim == 2 else preds


def _column_metric(metric: str, task: str) -> tuple[str, str]:
    """The (metric, task) that scores one target column on its own."""
    if task == "multi_target_regression":
        return ("rmse" if metric in ("rmse", "mcrmse") else metric), "regression"
    return metric, "binary"


def _normalised_rows(probs: np.ndarray) -> np.ndarray:
    totals = probs.sum(axis=1, keepdims=True)
    return np.where(totals > 0, probs / np.where(totals > 0, totals, 1), 1 / probs.shape[1])


# --- weight search -------------------------------------------------------------------------------------------


def hill_climb(preds, y, metric: str, task: str, max_iter: int = 100, tol: float = 0.0) -> np.ndarray:
    """Caruana et al. 2004 greedy forward selection with replacement: start from the best single member, then
    repeatedly add (with replacement) the member that most improves the metric of the running average; stop when
    no addition improves by more than tol or after max_iter. Returns non-negative weights summing to 1, shape (K,).

    The first step from a lone member is a 50/50 mix, so a member much better than the rest is kept alone; that
    coarseness is the price of weights that are small selection counts, which overfit the OOF rows little."""
    preds, y = _check_inputs(preds, y, metric, task)
    loss = _loss(metric, task, y)
    member_losses = [loss(member_preds) for member_preds in preds]
    counts = np.zeros(len(preds))
    best = int(np.argmin(member_losses))
    counts[best] = 1
    running_sum, current = preds[best].copy(), member_losses[best]
    for _ in range(max_iter):
        candidates = [loss((running_sum + member_preds) / (counts.sum() + 1)) for member_preds in preds]
        pick = int(np.argmin(candidates))
        if current - candidates[pick] <= tol:
            break
        counts[pick] += 1
        running_sum += preds[pick]
        current = candidates[pick]
    return counts / counts.sum()


def optimize_weights(preds, y, metric: str, task: str) -> np.ndarray:
    """Non-negative weights summing to 1 that optimise the metric: SLSQP from uniform weights, bounds [0, 1],
    sum = 1. The SLSQP result competes with uniform weights, the best single member and, for non-smooth metrics,
    hill climbing; the best of them (on these rows) is returned, shape (K,)."""
    preds, y = _check_inputs(preds, y, metric, task)
    n_members = len(preds)
    if n_members == 1:
        return np.ones(1)
    loss = _loss(metric, task, y)

    def objective(weights: np.ndarray) -> float:
        return loss(np.tensordot(_simplex(weights), preds, axes=1))

    uniform = np.full(n_members, 1 / n_members)
    result = minimize(objective, uniform, method="SLSQP", bounds=[(0.0, 1.0)] * n_members,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                      options={"maxiter": 200, "ftol": 1e-10})
    best_single = np.eye(n_members)[int(np.argmin([loss(member_preds) for member_preds in preds]))]
    candidates = [_simplex(result.x), uniform, best_single]
    if metric in NON_SMOOTH_METRICS:
        candidates.append(hill_climb(preds, y, metric, task))
    return min(candidates, key=objective)  # min keeps the first on ties, so SLSQP wins those


def rank_average(preds) -> np.ndarray:
    """Average of per-member rank-transformed predictions scaled to [0, 1] (for rank metrics like AUC); for 2-D
    member predictions each column is ranked separately. Ties share their average rank."""
    return _scaled_ranks(_check_preds(preds)).mean(axis=0)


def _scaled_ranks(preds: np.ndarray) -> np.ndarray:
    """Each member's (and column's) ranks over the n rows, mapped onto [0, 1]."""
    n_rows = preds.shape[1]
    return (rankdata(preds, axis=1) - 1) / (n_rows - 1) if n_rows > 1 else np.full(preds.shape, 0.5)


# --- stacking ------------------------------------------------------------------------------------------------


def _stack_features(preds: np.ndarray, task: str) -> np.ndarray:
    """(K, n, *out) -> per-column features (K, n, out): logits for binary/multilabel, log-probs for multiclass."""
    if task in REGRESSION_TASKS:
        return _columns(preds)
    if task == "multiclass":
        return np.log(np.clip(preds, STACK_EPS, 1.0))
    return logit(np.clip(_columns(preds), STACK_EPS, 1 - STACK_EPS))


def _fit_stack(preds: np.ndarray, y: np.ndarray, task: str) -> dict:
    features = _stack_features(preds, task)
    if task == "multiclass":
        rows = features.transpose(1, 0, 2).reshape(features.shape[1], -1)  # (n, K*C): member-major
        labels = y.astype(int)
        classes = np.unique(labels)
        if classes.size < 2:  # training rows of one class: predict it
            return {"model": "multinomial_logistic", "classes": classes.tolist(),
                    "coef": np.zeros((1, rows.shape[1])).tolist(), "intercept": [0.0]}
        model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(rows, labels)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # sklearn's two-class form; softmax([-z/2, z/2]) equals [1 - sigmoid(z), sigmoid(z)]
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        return {"model": "multinomial_logistic", "classes": model.classes_.astype(int).tolist(),
                "coef": coef.tolist(), "intercept": intercept.tolist(), "C": LOGISTIC_C}
    targets = y.reshape(len(y), -1)
    coef, intercept, extra = [], [], []
    for column in range(targets.shape[1]):
        rows, target = features[:, :, column].T, targets[:, column]
        if task in REGRESSION_TASKS:
            model = RidgeCV(alphas=RIDGE_ALPHAS).fit(rows, target)
            coef.append(model.coef_.tolist())
            intercept.append(float(model.intercept_))
            extra.append(float(model.alpha_))
        elif np.unique(target).size < 2:  # a label with one class in these rows: predict its prevalence
            coef.append([0.0] * rows.shape[1])
            intercept.append(float(logit(np.clip(target.mean(), STACK_EPS, 1 - STACK_EPS))))
        else:
            model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(rows, target.astype(int))
            coef.append(model.coef_[0].tolist())
            intercept.append(float(model.intercept_[0]))
    if task in REGRESSION_TASKS:
        return {"model": "ridge", "coef": coef, "intercept": intercept, "alpha": extra}
    return {"model": "logistic", "coef": coef, "intercept": intercept, "C": LOGISTIC_C}


def _apply_stack(blend: dict, preds: np.ndarray) -> np.ndarray:
    features = _stack_features(preds, blend["task"])
    coef, intercept = np.asarray(blend["coef"]), np.asarray(blend["intercept"])
    if blend["model"] == "multinomial_logistic":
        rows = features.transpose(1, 0, 2).reshape(features.shape[1], -1)
        probs = np.zeros((rows.shape[0], preds.shape[2]))
        probs[:, blend["classes"]] = softmax(rows @ coef.T + intercept, axis=1)
        return probs
    linear = np.einsum("knt,tk->nt", features, coef) + intercept
    return linear if blend["model"] == "ridge" else expit(linear)


# --- fit, apply, score ---------------------------------------------------------------------------------------


def fit_blend(method: str, preds, y, metric: str, task: str, per_target: bool = False) -> dict:
    """Fit a blend; returns a JSON-serialisable description for `apply_blend`.

    hill_climb / optimize / rank_average store "weights" (K,); with per_target=True (multi-target regression or
    multilabel) hill_climb / optimize store "weights" (T, K), each column fitted with its own single-column metric
    (rmse for rmse/mcrmse, else the same metric). stack stores one ridge (regression, RidgeCV-chosen alpha) or
    logistic regression on member logits (binary/multilabel) per column, or one multinomial logistic regression on
    the concatenated member log-probabilities (multiclass), as "coef"/"intercept" lists. stack and rank_average
    already work column by column, so per_target changes nothing for them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose one of {list(METHODS)}")
    preds, y = _check_inputs(preds, y, metric, task)
    if per_target and task not in PER_TARGET_TASKS:
        raise ValueError(f"per_target needs several target columns ({list(PER_TARGET_TASKS)}); task is {task!r}")
    n_members = len(preds)
    blend = {"method": method, "task": task, "metric": metric, "n_members": n_members,
             "output_shape": list(preds.shape[2:]), "per_target": bool(per_target)}
    fit_weights = hill_climb if method == "hill_climb" else optimize_weights
    if method == "rank_average":
        blend["weights"] = [1 / n_members] * n_members
    elif method == "stack":
        blend.update(_fit_stack(preds, y, task))
    elif per_target:
        column_metric, column_task = _column_metric(metric, task)
        blend["weights"] = [fit_weights(preds[:, :, column], y[:, column], column_metric, column_task).tolist()
                            for column in range(y.shape[1])]
    else:
        blend["weights"] = fit_weights(preds, y, metric, task).tolist()
    return blend


def apply_blend(blend: dict, preds) -> np.ndarray:
    """Apply a fitted blend to member predictions (OOF or test) of shape (K, n, *out); returns (n, *out) in the
    task's y_pred shape (probabilities for classification, rows summing to 1 for multiclass)."""
    if blend.get("method") not in METHODS:
        raise ValueError(f"blend method {blend.get('method')!r} is not one of {list(METHODS)}")
    preds = _check_preds(preds)
    if len(preds) != blend["n_members"] or list(preds.shape[2:]) != blend["output_shape"]:
        raise ValueError(f"blend was fitted on {blend['n_members']} members with outputs {blend['output_shape']}; "
                         f"got preds {preds.shape} ({len(preds)} members, outputs {list(preds.shape[2:])})")
    if blend["method"] == "stack":
        return _apply_stack(blend, preds).reshape(preds.shape[1:])
    weights = np.asarray(blend["weights"], dtype=np.float64)
    members = _scaled_ranks(preds) if blend["method"] == "rank_average" else preds
    if weights.ndim == 2:
        blended = np.einsum("tk,knt->nt", weights, members)
    else:
        blended = np.tensordot(weights, members, axes=1)
    return _normalised_rows(blended) if blend["task"] == "multiclass" else blended


def nested_cv(method: str, preds, y, folds, metric: str, task: str, per_target: bool = False) -> dict:
    """Honest CV of a blend: for each fold k, fit the blend on rows with folds != k only and apply it to fold k;
    score the concatenated predictions. Returns {"cv": honest score, "cv_in_sample": score of the blend fit on all
    rows and applied to all rows, "fold_scores": [...], "oof": the honest blended OOF array, "blend": the blend fit
    on all rows}."""
    if method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose one of {list(METHODS)}")
    preds, y = _check_inputs(preds, y, metric, task)
    folds = np.asarray(folds)
    if folds.shape != (len(y),):
        raise ValueError(f"folds must hold one fold id per row, shape ({len(y)},); got {folds.shape}")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"nested CV needs at least 2 folds; folds holds {fold_ids.tolist()}")
    oof = np.zeros(preds.shape[1:])
    fold_scores = []
    for fold in fold_ids:
        held_out = folds == fold
        fold_blend = fit_blend(method, preds[:, ~held_out], y[~held_out], metric, task, per_target)  # folds != k
        oof[held_out] = apply_blend(fold_blend, preds[:, held_out])
        fold_scores.append(score(metric, task, y[held_out], oof[held_out]))
    blend = fit_blend(method, preds, y, metric, task, per_target)
    return {"cv": score(metric, task, y, oof), "cv_in_sample": score(metric, task, y, apply_blend(blend, preds)),
            "fold_scores": fold_scores, "oof": oof, "blend": blend}
