"""Tests for dontstop.blend on constructed members whose best blend is known: weight search recovers it, the
stackers beat their members, nested CV carries no optimism, and a fitted blend re-applies from JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, logit, softmax
from sklearn.linear_model import LogisticRegression, RidgeCV

from dontstop.blend import (
    LOGISTIC_C,
    METHODS,
    RIDGE_ALPHAS,
    STACK_EPS,
    apply_blend,
    fit_blend,
    hill_climb,
    nested_cv,
    optimize_weights,
    rank_average,
)
from dontstop.metrics import score

N_ROWS = 2000
N_FOLDS = 5


def regression_members(seed: int = 0, n_rows: int = N_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """y plus good (sd 0.2), weaker (sd 0.4) independent noise, and a pure-noise member."""
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1, n_rows)
    good, weaker, noise = y + rng.normal(0, 0.2, n_rows), y + rng.normal(0, 0.4, n_rows), rng.normal(0, 1, n_rows)
    return np.stack([good, weaker, noise]), y


def binary_members(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two independent signals drive y; member A sees one, member B the other. Also returns the latent score."""
    rng = np.random.default_rng(seed)
    signal_a, signal_b = rng.normal(0, 1, (2, N_ROWS))
    latent = signal_a + signal_b
    y = (latent + rng.normal(0, 0.5, N_ROWS) > 0).astype(int)
    preds = np.stack([expit(signal_a + rng.normal(0, 0.3, N_ROWS)), expit(signal_b + rng.normal(0, 0.3, N_ROWS))])
    return preds, y, latent


def multiclass_members(seed: int = 0, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probability members of decreasing quality (the last is pure noise) for y in 0..n_classes-1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, N_ROWS)
    onehot = np.eye(n_classes)[y]
    members = [softmax(strength * onehot + rng.normal(0, 1, onehot.shape), axis=1) for strength in (2.0, 1.0, 0.0)]
    return np.stack(members), y


def fold_ids(n_rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n_rows) % N_FOLDS)


# --- weight search -------------------------------------------------------------------------------------------


def test_weights_follow_inverse_noise_variance():
    preds, y = regression_members()
    # Independent noises of variance 0.2^2 and 0.4^2: the optimum is proportional to 1/s^2 -> [0.8, 0.2].
    expected = np.array([1 / 0.04, 1 / 0.16]) / (1 / 0.04 + 1 / 0.16)
    optimized = optimize_weights(preds, y, "rmse", "regression")
    climbed = hill_climb(preds, y, "rmse", "regression")
    for weights in (optimized, climbed):
        assert weights.shape == (3,) and np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
        assert weights[2] < 0.03  # pure noise
        assert weights[0] > weights[1]
    np.testing.assert_allclose(optimized[:2], expected, atol=0.05)


def test_optimize_recovers_known_weights():
    rng = np.random.default_rng(1)
    members = rng.normal(0, 1, (2, N_ROWS))
    y = 0.7 * members[0] + 0.3 * members[1]
    np.testing.assert_allclose(optimize_weights(members, y, "rmse", "regression"), [0.7, 0.3], atol=0.02)
    np.testing.assert_allclose(hill_climb(members, y, "rmse", "regression"), [0.7, 0.3], atol=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_hill_climb_never_picks_pure_noise_over_a_good_member(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(3, 1, 500)
    preds = np.stack([rng.normal(3, 1, 500), y + rng.normal(0, 0.3, 500), rng.normal(3, 1, 500)])
    np.testing.assert_array_equal(hill_climb(preds, y, "rmse", "regression"), [0.0, 1.0, 0.0])
    probs, labels, _ = binary_members(seed)
    with_noise = np.stack([probs[0], rng.uniform(0, 1, N_ROWS)])
    np.testing.assert_array_equal(hill_climb(with_noise, labels, "auc", "binary"), [1.0, 0.0])


def test_single_member_gets_weight_one():
    preds, y = regression_members()
    for fit in (hill_climb, optimize_weights):
        np.testing.assert_array_equal(fit(preds[:1], y, "rmse", "regression"), [1.0])
    assert fit_blend("optimize", preds[:1], y, "rmse", "regression")["weights"] == [1.0]


# --- classification ------------------------------------------------------------------------------------------


def test_rank_average_ranks_and_helps_auc():
    rng = np.random.default_rng(2)
    latent = rng.normal(0, 1, N_ROWS)
    y = (latent + rng.normal(0, 0.5, N_ROWS) > 0).astype(int)
    scores = np.stack([latent + rng.normal(0, 0.8, N_ROWS), latent + rng.normal(0, 1.5, N_ROWS)])
    probs = np.stack([expit(scores[0]), expit(3 * scores[1] - 2)])  # two very different calibrations
    averaged = rank_average(probs)
    assert averaged.shape == (N_ROWS,) and 0.0 <= averaged.min() and averaged.max() <= 1.0
    np.testing.assert_allclose(averaged, rank_average(scores))  # ranks ignore monotone transforms
    member_auc = [score("auc", "binary", y, p) for p in probs]
    assert score("auc", "binary", y, averaged) > min(member_auc) + 0.01
    assert score("auc", "binary", y, averaged) > score("auc", "binary", y, probs.mean(axis=0))
    np.testing.assert_allclose(apply_blend(fit_blend("rank_average", probs, y, "auc", "binary"), probs), averaged)
    # 2-D members: each column ranked on its own
    columns = rng.normal(0, 1, (1, 50, 3))
    for column in range(3):
        order = np.argsort(columns[0, :, column])
        np.testing.assert_allclose(rank_average(columns)[order, column], np.linspace(0, 1, 50))


def test_stack_beats_each_member_auc_honestly():
    preds, y, _ = binary_members()
    member_auc = [score("auc", "binary", y, p) for p in preds]
    result = nested_cv("stack", preds, y, fold_ids(N_ROWS), "auc", "binary")
    assert result["cv"] > max(member_auc) + 0.05
    assert result["oof"].shape == (N_ROWS,) and 0 <= result["oof"].min() and result["oof"].max() <= 1


@pytest.mark.parametrize("method", ["hill_climb", "optimize", "stack"])
def test_multiclass_blend_is_probabilities_and_no_worse_than_best_member(method):
    preds, y = multiclass_members()
    best_member = min(score("logloss", "multiclass", y, p) for p in preds)
    blended = apply_blend(fit_blend(method, preds, y, "logloss", "multiclass"), preds)
    assert blended.shape == (N_ROWS, 3)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0, atol=1e-9)
    assert score("logloss", "multiclass", y, blended) <= best_member + 1e-9


# --- nested CV -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hill_climb", "optimize", "stack"])
@pytest.mark.parametrize("seed", range(3))
def test_nested_cv_is_not_optimistic_on_noise_members(method, seed):
    rng = np.random.default_rng(seed)
    n_rows = 300
    y, preds = rng.normal(0, 1, n_rows), rng.normal(0, 1, (6, n_rows))
    result = nested_cv(method, preds, y, fold_ids(n_rows, seed), "rmse", "regression")
    assert result["cv"] > result["cv_in_sample"]  # rmse: the in-sample blend looks better than it is
    assert result["cv"] == pytest.approx(score("rmse", "regression", y, result["oof"]))
    assert len(result["fold_scores"]) == N_FOLDS
    assert result["blend"]["method"] == method


# --- per target ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hill_climb", "optimize"])
def test_per_target_weights_follow_per_column_quality(method):
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, (N_ROWS, 2))
    # member A is good on column 0 and poor on column 1; member B the other way round
    member_a = y + rng.normal(0, 1, y.shape) * np.array([0.2, 0.8])
    member_b = y + rng.normal(0, 1, y.shape) * np.array([0.8, 0.2])
    preds = np.stack([member_a, member_b])
    blend = fit_blend(method, preds, y, "mcrmse", "multi_target_regression", per_target=True)
    weights = np.asarray(blend["weights"])
    assert weights.shape == (2, 2)
    assert weights[0, 0] > 0.8 and weights[1, 1] > 0.8
    shared = fit_blend(method, preds, y, "mcrmse", "multi_target_regression")
    assert (score("mcrmse", "multi_target_regression", y, apply_blend(blend, preds))
            < score("mcrmse", "multi_target_regression", y, apply_blend(shared, preds)))


def test_per_target_multilabel_uses_the_column_metric():
    preds, y, _ = binary_members()
    labels = np.stack([y, 1 - y], axis=1)
    noise = np.random.default_rng(4).uniform(0.05, 0.95, (2, N_ROWS))
    # member 0 predicts label 0 and guesses label 1; member 1 the other way round
    members = np.stack([np.stack([preds.mean(axis=0), noise[0]], axis=1),
                        np.stack([noise[1], 1 - preds.mean(axis=0)], axis=1)])
    blend = fit_blend("hill_climb", members, labels, "auc", "multilabel", per_target=True)
    np.testing.assert_array_equal(blend["weights"], [[1.0, 0.0], [0.0, 1.0]])
    assert apply_blend(blend, members).shape == (N_ROWS, 2)


# --- re-application ------------------------------------------------------------------------------------------


def _roundtrip(blend: dict) -> dict:
    return json.loads(json.dumps(blend))


@pytest.mark.parametrize("method", METHODS)
def test_apply_reproduces_in_sample_prediction_after_json(method):
    preds, y = regression_members(n_rows=400)
    blend = fit_blend(method, preds, y, "rmse", "regression")
    in_sample = apply_blend(blend, preds)
    np.testing.assert_allclose(apply_blend(_roundtrip(blend), preds), in_sample)
    assert nested_cv(method, preds, y, fold_ids(400), "rmse", "regression")["cv_in_sample"] == pytest.approx(
        score("rmse", "regression", y, in_sample))
    if method in ("hill_climb", "optimize"):
        np.testing.assert_allclose(in_sample, np.tensordot(blend["weights"], preds, axes=1))
    if method == "stack":
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(preds.T, y)
        np.testing.assert_allclose(in_sample, ridge.predict(preds.T))


def test_stack_roundtrip_matches_sklearn_for_classification():
    preds, y, _ = binary_members()
    blend = _roundtrip(fit_blend("stack", preds, y, "logloss", "binary"))
    features = logit(np.clip(preds, STACK_EPS, 1 - STACK_EPS)).T
    model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(features, y)
    np.testing.assert_allclose(apply_blend(blend, preds), model.predict_proba(features)[:, 1], atol=1e-6)

    probs, labels = multiclass_members()
    blend = _roundtrip(fit_blend("stack", probs, labels, "logloss", "multiclass"))
    features = np.log(np.clip(probs, STACK_EPS, 1)).transpose(1, 0, 2).reshape(N_ROWS, -1)
    model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(features, labels)
    np.testing.assert_allclose(apply_blend(blend, probs), model.predict_proba(features), atol=1e-6)
    # a two-class fold (class 2 absent) still gives full-width rows summing to 1
    two_class = labels < 2
    blend = fit_blend("stack", probs[:, two_class], labels[two_class], "logloss", "multiclass")
    applied = apply_blend(blend, probs)
    np.testing.assert_allclose(applied.sum(axis=1), 1.0)
    assert np.all(applied[:, 2] == 0)


# --- errors --------------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    preds, y = regression_members(n_rows=100)
    broken = preds.copy()
    broken[1, [3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"member 1 holds 2 NaN"):
        fit_blend("optimize", broken, y, "rmse", "regression")
    with pytest.raises(ValueError, match=r"expected preds \(K, n\) matching y"):
        hill_climb(preds[:, :-1], y, "rmse", "regression")
    with pytest.raises(ValueError, match=r"expected preds \(K, n, C\)"):
        fit_blend("stack", preds, y.astype(int) % 2, "logloss", "multiclass")
    with pytest.raises(ValueError, match=r"unknown blend method 'mean'.*hill_climb.*stack"):
        fit_blend("mean", preds, y, "rmse", "regression")
    with pytest.raises(ValueError, match=r"unknown blend method"):
        nested_cv("mean", preds, y, fold_ids(100), "rmse", "regression")
    with pytest.raises(ValueError, match=r"per_target"):
        fit_blend("optimize", preds, y, "rmse", "regression", per_target=True)
    blend = fit_blend("optimize", preds, y, "rmse", "regression")
    with pytest.raises(ValueError, match=r"fitted on 3 members"):
        apply_blend(blend, preds[:2])
    with pytest.raises(ValueError, match=r"at least 2 folds"):
        nested_cv("optimize", preds, y, np.zeros(100, dtype=int), "rmse", "regression")
