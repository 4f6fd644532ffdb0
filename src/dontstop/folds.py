"""The cross-validation split: made once per competition, then read by every stage and every experiment.

`assign_folds` is pure: targets (+ optional groups) in, one fold index per row out. `write_fold_file` stores
the split as `id,fold` csv plus a sidecar `<csv>.json` holding the split's settings and the csv's sha256;
`read_fold_file` refuses a csv whose bytes no longer match that hash, or whose ids are not the data's ids,
so no experiment can silently train on a different split than the one its out-of-fold predictions assume.

Strategies (all shuffled with the split seed, all from scikit-learn / iterative-stratification):

| task                     | no groups                          | groups                                |
|--------------------------|------------------------------------|---------------------------------------|
| binary, multiclass       | stratified                         | stratified_group                      |
| regression               | stratified_binned (quantile bins)  | stratified_group_binned               |
| multilabel               | multilabel_stratified              | stratified_group (first label)        |
| multi_target_regression  | multilabel_stratified_binned       | stratified_group_binned (first column)|
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from dontstop.io import file_sha256, read_json, write_csv, write_json

TASKS = ("binary", "multiclass", "regression", "multi_target_regression", "multilabel")
_CLASSIFICATION = ("binary", "multiclass")
_REGRESSION_LIKE = ("regression", "multi_target_regression")
_MAKE_FOLDS_HINT = "run `python -m dontstop folds <config>` to create it"
_REMAKE_FOLDS_HINT = "rerun `python -m dontstop folds <config> --force`"


def assign_folds(targets: np.ndarray, task: str, n_folds: int, seed: int, n_bins: int = 10,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Pure: returns (fold index per row in 0..n_folds-1 as int64 array, strategy name)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    n_folds, n_bins = int(n_folds), int(n_bins)

    targets = _checked_targets(targets, task)
    n_rows = len(targets)
    if n_folds > n_rows:
        raise ValueError(f"n_folds={n_folds} is more than the number of rows ({n_rows})")

    # One stratification label per row (used directly, or by StratifiedGroupKFold), or an indicator matrix.
    if task in _CLASSIFICATION:
        labels = _class_codes(targets, n_folds)
        strategy, y = "stratified", labels
    elif task == "regression":
        labels = _quantile_bins(targets, n_bins, n_folds)
        strategy, y = "stratified_binned", labels
    elif task == "multilabel":
        labels = targets[:, 0].astype(np.int64)
        strategy, y = "multilabel_stratified", targets.astype(bool)
    else:  # multi_target_regression
        column_bins = [_quantile_bins(targets[:, j], n_bins, n_folds) for j in range(targets.shape[1])]
        labels = column_bins[0]
        strategy = "multilabel_stratified_binned"
        y = np.hstack([np.eye(bins.max() + 1, dtype=bool)[bins] for bins in column_bins])

    folds = np.full(n_rows, -1, dtype=np.int64)
    if groups is not None:
        group_codes = _group_codes(groups, n_rows, n_folds)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n_rows), labels, group_codes)
        strategy = "stratified_group_binned" if task in _REGRESSION_LIKE else "stratified_group"
    elif y.ndim == 2:
        if y.shape[1] < 2:
            # iterstrat only accepts a multilabel-indicator matrix (>= 2 columns); the complement adds no
            # new constraint but makes a single label acceptable.
            y = np.hstack([y, ~y])
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n_rows), y)
    else:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(n_rows), y)
    for fold, (_, valid_idx) in enumerate(splits):
        folds[valid_idx] = fold
    assert (folds >= 0).all(), "a splitter left rows without a fold"
    return folds, strategy


def _checked_targets(targets, task: str) -> np.ndarray:
    """Shape- and NaN-check the targets; classification labels stay as given, the rest become float."""
    if task in _CLASSIFICATION:
        values = np.asarray(targets, dtype=object)
    else:
        try:
            values = np.asarray(targets, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{task} targets must be numeric: {err}") from err
    if task in _CLASSIFICATION or task == "regression":
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise ValueError(f"{task} targets must be 1-D (one value per row), got shape {values.shape}")
    elif values.ndim != 2:
        raise ValueError(f"{task} targets must be 2-D (rows x columns), got shape {values.shape}")
    if len(values) == 0:
        raise ValueError("no rows to split: targets are empty")

    missing = pd.isna(values).reshape(len(values), -1).any(axis=1)
    if missing.any():
        example_rows = np.flatnonzero(missing)[:5].tolist()
        raise ValueError(f"{int(missing.sum())} of {len(values)} rows have a missing (NaN) target "
                         f"(e.g. rows {example_rows}); drop or fill them before making folds")
    if task == "multilabel" and not np.isin(values, (0.0, 1.0)).all():
        bad_row = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)).all(axis=1))[0])
        raise ValueError(f"multilabel targets must be 0/1; row {bad_row} is {values[bad_row].tolist()}")
    return values


def _class_codes(labels: np.ndarray, n_folds: int) -> np.ndarray:
    """Integer code per class label; refuses a class too rare to appear in every validation fold."""
    codes, classes = pd.factorize(pd.Series(labels, dtype=object), sort=False)
    counts = np.bincount(codes, minlength=len(classes))
    rare = [(classes[i], int(counts[i])) for i in np.flatnonzero(counts < n_folds)]
    if rare:
        listed = ", ".join(f"{label!r} ({count} rows)" for label, count in rare[:5])
        noun = "class" if len(rare) == 1 else "classes"
        raise ValueError(f"{noun} {listed}: fewer members than n_folds={n_folds}, so some validation folds "
                         f"would have none of it; merge or drop the class, or lower n_folds")
    return codes.astype(np.int64)


def _quantile_bins(values: np.ndarray, n_bins: int, n_folds: int) -> np.ndarray:
    """Quantile bin per row, with as many bins (<= n_bins) as keep every bin at least n_folds rows big."""
    for q in range(min(n_bins, len(values)), 1, -1):
        bins = pd.qcut(values, q=q, labels=False, duplicates="drop")
        if np.isnan(bins).any():  # a constant column leaves a single edge: no bins at all
            break
        # Ties and interpolated edges can leave empty or tiny bins; a bin smaller than n_folds would make
        # StratifiedKFold warn, so fall back to fewer, wider bins.
        if np.bincount(bins.astype(np.int64)).min() >= n_folds:
            return bins.astype(np.int64)
    return np.zeros(len(values), dtype=np.int64)


def _group_codes(groups, n_rows: int, n_folds: int) -> np.ndarray:
    groups = np.asarray(groups, dtype=object)
    if groups.ndim != 1 or len(groups) != n_rows:
        raise ValueError(f"groups must be 1-D with one entry per row ({n_rows}), got shape {groups.shape}")
    missing = pd.isna(groups)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} rows have a missing group (e.g. rows "
                         f"{np.flatnonzero(missing)[:5].tolist()})")
    codes, uniques = pd.factorize(pd.Series(groups, dtype=object), sort=False)
    if n_folds > len(uniques):
        raise ValueError(f"n_folds={n_folds} is more than the number of groups ({len(uniques)})")
    return codes.astype(np.int64)


def _sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def write_fold_file(path: str | os.PathLike, ids: Sequence, folds: np.ndarray, meta: dict) -> str:
    """Write csv with columns `id`,`fold` (atomic), plus a sidecar JSON `<path>.json` holding
    meta + n_folds + n_rows + `hash` (sha256 of the csv file). Returns the hash."""
    ids = [str(i) for i in ids]
    folds = np.asarray(folds)
    if folds.ndim != 1 or len(folds) != len(ids):
        raise ValueError(f"got {len(ids)} ids but folds of shape {folds.shape}")
    if len(ids) == 0:
        raise ValueError("refusing to write an empty fold file")
    if not np.issubdtype(folds.dtype, np.integer) or folds.min() < 0:
        raise ValueError(f"folds must be non-negative integers, got dtype {folds.dtype} and min {folds.min()}")
    duplicated = pd.Series(ids)[pd.Series(ids).duplicated()].unique()[:5].tolist()
    if duplicated:
        raise ValueError(f"ids are not unique, e.g. {duplicated}; a fold file needs one row per id")

    write_csv(path, pd.DataFrame({"id": ids, "fold": folds.astype(np.int64)}))
    csv_hash = file_sha256(path)
    write_json(_sidecar_path(path), {**meta, "n_folds": int(folds.max()) + 1, "n_rows": len(ids),
                                     "hash": csv_hash})
    return csv_hash


def fold_file_hash(path: str | os.PathLike) -> str:
    """The sidecar's recorded hash, after checking the csv still has it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"fold file {path} not found; {_MAKE_FOLDS_HINT}")
    sidecar = _sidecar_path(path)
    if not sidecar.exists():
        raise FileNotFoundError(f"fold file {path} has no sidecar {sidecar} (was its writing interrupted?); "
                                f"{_REMAKE_FOLDS_HINT}")
    recorded = read_json(sidecar).get("hash")
    if recorded is None:
        raise ValueError(f"fold sidecar {sidecar} has no `hash` key; {_REMAKE_FOLDS_HINT}")
    if file_sha256(path) != recorded:
        raise ValueError(f"fold file {path} was modified after it was written; {_REMAKE_FOLDS_HINT}")
    return recorded


def read_fold_file(path: str | os.PathLike,
                   expected_ids: Sequence | None = None) -> tuple[pd.DataFrame, str]:
    """Read the fold file and return (DataFrame with `id` and `fold`, hash), after verifying hash and ids."""
    csv_hash = fold_file_hash(path)
    # na_filter off: an id such as "NA" or "null" is an id, not a missing value.
    fold_df = pd.read_csv(path, dtype={"id": str}, na_filter=False)
    if list(fold_df.columns) != ["id", "fold"]:
        raise ValueError(f"fold file {path} must have columns ['id', 'fold'], got {list(fold_df.columns)}")
    fold_df["fold"] = fold_df["fold"].astype(np.int64)
    duplicated = fold_df.loc[fold_df["id"].duplicated(), "id"].unique()[:5].tolist()
    if duplicated:
        raise ValueError(f"fold file {path} has duplicate ids, e.g. {duplicated}; {_REMAKE_FOLDS_HINT}")

    if expected_ids is not None:
        expected = list(dict.fromkeys(str(i) for i in expected_ids))
        in_file = set(fold_df["id"])
        expected_set = set(expected)
        missing = [i for i in expected if i not in in_file]
        extra = [i for i in fold_df["id"] if i not in expected_set]
        if missing or extra:
            raise ValueError(
                f"fold file {path} does not match the data: {len(missing)} data ids are missing from it "
                f"(e.g. {missing[:5]}) and {len(extra)} of its ids are not in the data (e.g. {extra[:5]}); "
                f"if the data changed on purpose, {_REMAKE_FOLDS_HINT}")
    return fold_df, csv_hash


def run_folds(cfg, force: bool = False, log=print) -> str:
    """The `folds` stage: write the competition's fold file once; later runs reuse it unchanged.

    Rerunning with the same train ids keeps the existing file (so every experiment's OOF stays comparable);
    `force` rewrites it, which invalidates the OOFs made on the old one (they record its hash).
    """
    from dontstop.data import load_competition

    comp = load_competition(cfg.competition, log=log, need_test=False)
    spec = comp.spec
    path = cfg.fold_file
    ids = comp.train[spec.id_column]
    if Path(path).is_file() and not force:
        _, existing = read_fold_file(path, expected_ids=ids)
        log(f"fold file {path} exists (hash {existing[:12]}); reused (use --force to rewrite it)")
        return existing
    if spec.task == "multiclass" or spec.task == "binary":
        targets = comp.train[spec.target_columns[0]].astype(str).to_numpy()
    elif spec.task in ("regression",):
        targets = comp.train[spec.target_columns[0]].to_numpy(dtype=float)
    else:
        targets = comp.train[spec.target_columns].to_numpy(dtype=float)
    groups = comp.train[spec.group_column].astype(str).to_numpy() if spec.group_column else None
    folds, strategy = assign_folds(targets, spec.task, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.n_bins, groups)
    meta = {"competition": spec.name, "train": str(spec.train), "strategy": strategy, "seed": cfg.folds.seed,
            "n_bins": cfg.folds.n_bins, "target_columns": list(spec.target_columns),
            "group_column": spec.group_column}
    digest = write_fold_file(path, ids.tolist(), folds, meta)
    sizes = np.bincount(folds).tolist()
    log(f"fold file {path}: {strategy}, {cfg.folds.n_folds} folds of sizes {sizes}, hash {digest[:12]}")
    return digest
