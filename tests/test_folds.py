"""Tests for dontstop.folds: the pure split (`assign_folds`) per task type, and the fold file round trip."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dontstop.folds import assign_folds, fold_file_hash, read_fold_file, write_fold_file
from dontstop.io import file_sha256

# A split that makes scikit-learn or pandas warn (tiny classes, empty bins) is a bug here, not noise.
pytestmark = pytest.mark.filterwarnings("error")

N_ROWS = 400
N_FOLDS = 5


def make_targets(task: str, n_rows: int = N_ROWS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if task == "binary":
        return (rng.random(n_rows) < 0.2).astype(np.int64)
    if task == "multiclass":
        return rng.choice(np.array(["cat", "dog", "eel", "fox"]), size=n_rows, p=[0.5, 0.3, 0.15, 0.05])
    if task == "regression":
        return rng.lognormal(size=n_rows)  # skewed, so unbinned random folds would differ visibly
    if task == "multi_target_regression":
        return rng.normal(size=(n_rows, 3)) * np.array([1.0, 5.0, 0.1])
    if task == "multilabel":
        return (rng.random((n_rows, 6)) < np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.7])).astype(np.int64)
    raise AssertionError(task)


def make_groups(n_rows: int, seed: int = 1) -> np.ndarray:
    """Groups of 1..6 rows (e.g. several essays by one author), shuffled so groups are not contiguous."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=n_rows)
    groups = np.repeat(np.arange(n_rows), sizes)[:n_rows]
    return np.array([f"author_{g}" for g in rng.permutation(groups)])


def fold_means(values: np.ndarray, folds: np.ndarray) -> np.ndarray:
    return np.array([values[folds == k].mean(axis=0) for k in range(N_FOLDS)])


STRATEGIES = {
    "binary": "stratified",
    "multiclass": "stratified",
    "regression": "stratified_binned",
    "multi_target_regression": "multilabel_stratified_binned",
    "multilabel": "multilabel_stratified",
}


@pytest.mark.parametrize("task", list(STRATEGIES))
def test_every_row_gets_one_fold_and_folds_are_balanced(task):
    folds, strategy = assign_folds(make_targets(task), task, N_FOLDS, seed=42)
    assert strategy == STRATEGIES[task]
    assert folds.dtype == np.int64
    assert folds.shape == (N_ROWS,)
    assert set(folds.tolist()) == set(range(N_FOLDS))
    sizes = np.bincount(folds, minlength=N_FOLDS)
    assert sizes.sum() == N_ROWS
    assert sizes.max() - sizes.min() <= 4, sizes  # 80 each, give or take the stratifier's rounding


@pytest.mark.parametrize("task", list(STRATEGIES))
def test_same_seed_same_folds_other_seed_other_folds(task):
    targets = make_targets(task)
    first, _ = assign_folds(targets, task, N_FOLDS, seed=7)
    again, _ = assign_folds(targets.copy(), task, N_FOLDS, seed=7)
    other, _ = assign_folds(targets, task, N_FOLDS, seed=8)
    np.testing.assert_array_equal(first, again)
    # Fold labels are arbitrary, so compare "which rows share a validation fold", not the raw labels.
    same_pairs_first = first[:, None] == first[None, :]
    same_pairs_other = other[:, None] == other[None, :]
    assert (same_pairs_first != same_pairs_other).mean() > 0.2


def test_binary_fold_positive_rate_matches_global():
    targets = make_targets("binary")
    folds, _ = assign_folds(targets, "binary", N_FOLDS, seed=0)
    rates = fold_means(targets.astype(float), folds)
    # StratifiedKFold puts the same number of positives in every fold, give or take one row.
    np.testing.assert_allclose(rates, targets.mean(), atol=1.5 / (N_ROWS / N_FOLDS))


def test_multiclass_string_labels_fold_proportions_match_global():
    targets = make_targets("multiclass")
    folds, _ = assign_folds(targets, "multiclass", N_FOLDS, seed=0)
    table = pd.crosstab(folds, targets, normalize="index")
    global_share = pd.Series(targets).value_counts(normalize=True)[table.columns]
    assert list(table.columns) == ["cat", "dog", "eel", "fox"]
    assert np.abs(table.to_numpy() - global_share.to_numpy()).max() <= 0.02


def test_regression_every_fold_gets_its_share_of_every_decile():
    targets = make_targets("regression")
    folds, _ = assign_folds(targets, "regression", N_FOLDS, seed=0)
    deciles = pd.qcut(targets, 10, labels=False)
    per_fold_per_decile = pd.crosstab(deciles, folds).to_numpy()
    assert per_fold_per_decile.shape == (10, N_FOLDS)
    # 400 rows / 10 bins / 5 folds = exactly 8 rows of each decile in each fold.
    assert (per_fold_per_decile == 8).all()
    medians = np.array([np.median(targets[folds == k]) for k in range(N_FOLDS)])
    assert np.abs(medians - np.median(targets)).max() < 0.1 * targets.std()


def test_regression_accepts_column_vector_and_ties_without_warning():
    # 70% of rows share one value: most quantile edges collapse, the rest must still make valid bins.
    rng = np.random.default_rng(3)
    targets = np.where(rng.random(200) < 0.7, 0.0, rng.normal(size=200)).reshape(-1, 1)
    folds, strategy = assign_folds(targets, "regression", N_FOLDS, seed=0, n_bins=20)
    assert strategy == "stratified_binned"
    assert np.bincount(folds).tolist() == [40, 40, 40, 40, 40]
    # The ~30% of rows off the tie still spread evenly: ~12 per fold, not whatever a random split gives.
    for side in (targets[:, 0] > 0, targets[:, 0] < 0):
        rows_per_fold = np.bincount(folds[side], minlength=N_FOLDS)
        assert rows_per_fold.max() - rows_per_fold.min() <= 3, rows_per_fold


def test_constant_regression_target_still_splits():
    folds, _ = assign_folds(np.full(50, 3.0), "regression", N_FOLDS, seed=0)
    assert np.bincount(folds).tolist() == [10, 10, 10, 10, 10]


def test_multilabel_per_label_positive_rates_match_global():
    targets = make_targets("multilabel")
    folds, _ = assign_folds(targets, "multilabel", N_FOLDS, seed=0)
    rates = fold_means(targets.astype(float), folds)
    assert rates.shape == (N_FOLDS, 6)
    assert np.abs(rates - targets.mean(axis=0)).max() <= 0.02
    # The rarest label (5% = ~20 rows) lands in every validation fold.
    assert (rates[:, 0] > 0).all()


def test_single_label_multilabel_is_accepted():
    targets = (np.arange(100) % 4 == 0).astype(int).reshape(-1, 1)
    folds, strategy = assign_folds(targets, "multilabel", N_FOLDS, seed=0)
    assert strategy == "multilabel_stratified"
    assert np.bincount(folds[targets[:, 0] == 1]).tolist() == [5, 5, 5, 5, 5]


def test_multi_target_fold_means_match_global_for_every_column():
    targets = make_targets("multi_target_regression")
    folds, _ = assign_folds(targets, "multi_target_regression", N_FOLDS, seed=0)
    scaled_gap = np.abs(fold_means(targets, folds) - targets.mean(axis=0)) / targets.std(axis=0)
    assert scaled_gap.shape == (N_FOLDS, 3)
    assert scaled_gap.max() < 0.15


GROUPED_STRATEGIES = {
    "binary": "stratified_group",
    "multiclass": "stratified_group",
    "regression": "stratified_group_binned",
    "multi_target_regression": "stratified_group_binned",
    "multilabel": "stratified_group",
}


@pytest.mark.parametrize("task", list(GROUPED_STRATEGIES))
def test_grouped_split_never_splits_a_group(task):
    groups = make_groups(N_ROWS)
    folds, strategy = assign_folds(make_targets(task), task, N_FOLDS, seed=0, groups=groups)
    assert strategy == GROUPED_STRATEGIES[task]
    assert set(folds.tolist()) == set(range(N_FOLDS))
    folds_per_group = pd.Series(folds).groupby(groups).nunique()
    assert len(folds_per_group) > 60
    assert (folds_per_group == 1).all()
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 12, sizes  # groups are indivisible, so sizes vary a little more


def test_grouped_binary_stays_stratified():
    targets = make_targets("binary")
    groups = make_groups(N_ROWS)
    folds, _ = assign_folds(targets, "binary", N_FOLDS, seed=0, groups=groups)
    rates = fold_means(targets.astype(float), folds)
    assert np.abs(rates - targets.mean()).max() <= 0.03


def test_grouped_regression_stays_stratified():
    targets = make_targets("regression")
    groups = make_groups(N_ROWS)
    folds, _ = assign_folds(targets, "regression", N_FOLDS, seed=0, groups=groups)
    quintiles = pd.qcut(targets, 5, labels=False)
    share = pd.crosstab(folds, quintiles, normalize="index").to_numpy()
    assert np.abs(share - 0.2).max() <= 0.06


def test_grouped_split_is_deterministic():
    targets, groups = make_targets("multiclass"), make_groups(N_ROWS)
    first, _ = assign_folds(targets, "multiclass", N_FOLDS, seed=3, groups=groups)
    again, _ = assign_folds(targets, "multiclass", N_FOLDS, seed=3, groups=groups.copy())
    np.testing.assert_array_equal(first, again)


def test_class_rarer_than_n_folds_is_refused_by_name_and_count():
    targets = np.array(["common"] * 50 + ["rare"] * 3, dtype=object)
    with pytest.raises(ValueError, match=r"'rare' \(3 rows\).*n_folds=5"):
        assign_folds(targets, "multiclass", N_FOLDS, seed=0)
    with pytest.raises(ValueError, match=r"'rare' \(3 rows\)"):
        assign_folds(targets, "multiclass", N_FOLDS, seed=0, groups=np.arange(53))
    folds, _ = assign_folds(targets, "multiclass", 3, seed=0)  # 3 members are enough for 3 folds
    assert sorted(folds[50:].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("task", ["regression", "binary", "multi_target_regression"])
def test_nan_targets_are_refused_with_a_count(task):
    targets = make_targets(task).astype(float)
    targets[[5, 17]] = np.nan
    with pytest.raises(ValueError, match=r"2 of 400 rows have a missing \(NaN\) target.*\[5, 17\]"):
        assign_folds(targets, task, N_FOLDS, seed=0)


def test_bad_n_folds_and_task_are_refused():
    targets = make_targets("binary")
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2, got 1"):
        assign_folds(targets, "binary", 1, seed=0)
    with pytest.raises(ValueError, match=r"n_folds=5 is more than the number of rows \(4\)"):
        assign_folds(np.array([0.1, 0.2, 0.3, 0.4]), "regression", N_FOLDS, seed=0)
    with pytest.raises(ValueError, match=r"n_folds=5 is more than the number of groups \(2\)"):
        assign_folds(targets, "binary", N_FOLDS, seed=0, groups=np.arange(N_ROWS) % 2)
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        assign_folds(targets, "ranking", N_FOLDS, seed=0)
    with pytest.raises(ValueError, match="multilabel targets must be 0/1; row 0"):
        assign_folds(np.full((10, 2), 2), "multilabel", 2, seed=0)


# --- fold file -----------------------------------------------------------------------------------------


def write_example(tmp_path, ids=None):
    ids = list(range(1000, 1000 + N_ROWS)) if ids is None else ids
    folds, strategy = assign_folds(make_targets("binary"), "binary", N_FOLDS, seed=42)
    path = tmp_path / "folds" / "folds.csv"
    digest = write_fold_file(path, ids, folds, {"strategy": strategy, "seed": 42, "task": "binary"})
    return path, ids, folds, digest


def test_fold_file_round_trip_with_hash(tmp_path):
    path, ids, folds, digest = write_example(tmp_path)
    assert digest == file_sha256(path)
    assert len(digest) == 64

    sidecar = json.loads((tmp_path / "folds" / "folds.csv.json").read_text())
    assert sidecar == {"strategy": "stratified", "seed": 42, "task": "binary", "n_folds": 5, "n_rows": 400,
                       "hash": digest}
    assert [p.name for p in sorted(path.parent.iterdir())] == ["folds.csv", "folds.csv.json"]  # no temp files

    fold_df, read_digest = read_fold_file(path, expected_ids=ids)
    assert read_digest == digest == fold_file_hash(path)
    assert list(fold_df.columns) == ["id", "fold"]
    assert fold_df["id"].tolist() == [str(i) for i in ids]
    assert fold_df["fold"].dtype == np.int64
    np.testing.assert_array_equal(fold_df["fold"].to_numpy(), folds)

    # Same split written again gives the same bytes, so the hash identifies the split.
    assert write_example(tmp_path / "again")[3] == digest


def test_string_ids_survive_the_round_trip(tmp_path):
    ids = ["007", "NA", "null", "a,b", "x"]
    path = tmp_path / "folds.csv"
    write_fold_file(path, ids, np.array([0, 1, 0, 1, 0]), {})
    fold_df, _ = read_fold_file(path, expected_ids=["x", "a,b", "null", "NA", "007"])
    assert fold_df["id"].tolist() == ids
    assert fold_df["fold"].tolist() == [0, 1, 0, 1, 0]


def test_tampered_fold_file_is_detected(tmp_path):
    path, *_ = write_example(tmp_path)
    lines = path.read_text().splitlines()
    row_id, fold = lines[1].split(",")
    lines[1] = f"{row_id},{(int(fold) + 1) % N_FOLDS}"  # someone "fixes" one fold by hand
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"folds\.csv was modified after it was written; rerun .*--force"):
        read_fold_file(path)
    with pytest.raises(ValueError, match="was modified after it was written"):
        fold_file_hash(path)


def test_missing_fold_file_tells_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv not found; run `python -m dontstop folds <config>`"):
        read_fold_file(tmp_path / "nope.csv")
    path, *_ = write_example(tmp_path)
    (tmp_path / "folds" / "folds.csv.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no sidecar"):
        read_fold_file(path)


def test_id_mismatch_names_counts_and_examples(tmp_path):
    path, ids, *_ = write_example(tmp_path)
    data_ids = ids[3:] + [1, 2]  # the data lost ids 1000..1002 and gained 1 and 2
    with pytest.raises(ValueError) as err:
        read_fold_file(path, expected_ids=data_ids)
    message = str(err.value)
    assert "2 data ids are missing from it (e.g. ['1', '2'])" in message
    assert "3 of its ids are not in the data (e.g. ['1000', '1001', '1002'])" in message

    many_missing = ids + list(range(20))
    with pytest.raises(ValueError, match=r"20 data ids are missing from it \(e\.g\. \['0', '1', '2', '3', '4'\]\)"):
        read_fold_file(path, expected_ids=many_missing)


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"ids are not unique, e\.g\. \['a'\]"):
        write_fold_file(tmp_path / "folds.csv", ["a", "b", "a"], np.array([0, 1, 0]), {})
    # A hand-made file with duplicates (and a matching sidecar) is still refused on read.
    path = tmp_path / "dup.csv"
    path.write_text("id,fold\na,0\nb,1\na,1\n")
    (tmp_path / "dup.csv.json").write_text(json.dumps({"hash": file_sha256(path)}))
    with pytest.raises(ValueError, match=r"duplicate ids, e\.g\. \['a'\]"):
        read_fold_file(path)
