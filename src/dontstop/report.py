"""Assemble an experiment's outputs once all its folds are finished.

Reads `oof/<exp>/oof_fold<k>.csv`, `test_fold<k>.csv` and `fold<k>.json`; writes `oof.csv` (id, fold,
targets, predictions), the fold-averaged `test.csv`, `submission.csv` and `scores.json`.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from dontstop import data as D
from dontstop.config import Config
from dontstop.io import git_commit, package_versions, read_json, write_csv, write_json
from dontstop.metrics import constant_prediction, get_metric, score
from dontstop.predict import make_submission


def constant_oof(comp: D.Competition, fold_of: np.ndarray) -> np.ndarray:
    """The no-skill OOF: for fold k, the mean (or class prior) of the other folds' targets."""
    y = D.metric_targets(comp)
    n_classes = len(comp.classes) if comp.classes else None
    out = None
    for k in np.unique(fold_of):
        valid = fold_of == k
        const = constant_prediction(comp.spec.task, y[~valid], int(valid.sum()), n_classes=n_classes)
        if out is None:
            out = np.zeros((len(y),) + const.shape[1:], dtype=np.float64)
        out[valid] = const
    return out


def assemble_outputs(cfg: Config, comp: D.Competition, fold_of: np.ndarray, fold_hash: str, log=print) -> dict:
    spec = comp.spec
    id_col = spec.id_column
    n_folds = int(fold_of.max()) + 1
    records = [read_json(cfg.oof_path / f"fold{k}.json") for k in range(n_folds)]
    stale = [r["fold"] for r in records if r.get("fold_file_hash") != fold_hash]
    if stale:
        raise ValueError(f"folds {stale} of {cfg.oof_path} were trained on another fold file than {cfg.fold_file}; "
                         f"retrain them with --force")
    parts = [pd.read_csv(cfg.oof_path / f"oof_fold{k}.csv", dtype={id_col: str}) for k in range(n_folds)]
    oof = pd.concat(parts).set_index(id_col).reindex(comp.train[id_col])
    if oof[comp.pred_columns].isna().any().any():
        raise ValueError(f"{cfg.oof_path}: OOF predictions are missing for some train rows; retrain with --force")
    preds = oof[comp.pred_columns].to_numpy(dtype=np.float64)
    metric = get_metric(spec.metric, spec.task)
    y = D.metric_targets(comp)
    yhat = D.metric_predictions(comp, preds)
    baseline = constant_oof(comp, fold_of)
    fold_scores = [score(metric.name, spec.task, y[fold_of == k], yhat[fold_of == k]) for k in range(n_folds)]
    baseline_folds = [score(metric.name, spec.task, y[fold_of == k], baseline[fold_of == k]) for k in range(n_folds)]
    scores = {
        "experiment": cfg.experiment, "task": spec.task, "metric": metric.name,
        "greater_is_better": metric.greater_is_better,
        "cv": score(metric.name, spec.task, y, yhat), "fold_scores": fold_scores,
        "fold_mean": float(np.mean(fold_scores)), "fold_std": float(np.std(fold_scores)),
        "baseline_cv": score(metric.name, spec.task, y, baseline), "baseline_fold_scores": baseline_folds,
        "n_folds": n_folds, "n_rows": len(comp.train), "fold_file": str(cfg.fold_file), "fold_file_hash": fold_hash,
        "backbone": cfg.model.backbone, "stages": list(cfg.stages),
        # label provenance: the folds whose labels trained each fold model (never the fold it predicts)
        "provenance": {f"fold{r['fold']}": r["trained_on_folds"] for r in records},
        "wall_time_s": {f"fold{r['fold']}": r["wall_time_s"] for r in records},
        "best_steps": {f"fold{r['fold']}": r["best_step"] for r in records},
        "git_commit": git_commit(), "versions": package_versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    oof_out = pd.DataFrame({id_col: comp.train[id_col].to_numpy(), "fold": fold_of})
    for column in spec.target_columns:
        oof_out[column] = comp.train[column].to_numpy()
    for i, column in enumerate(comp.pred_columns):
        oof_out[column] = preds[:, i]
    write_csv(cfg.oof_path / "oof.csv", oof_out)
    if comp.test is not None:
        write_test_outputs(cfg, comp, n_folds)
    write_json(cfg.oof_path / "scores.json", scores)
    better = "higher" if metric.greater_is_better else "lower"
    log(f"{cfg.experiment}: CV {metric.name} {scores['cv']:.5f} (folds {scores['fold_mean']:.5f} ± "
        f"{scores['fold_std']:.5f}); constant prediction {scores['baseline_cv']:.5f}; {better} is better")
    return scores


def write_test_outputs(cfg: Config, comp: D.Competition, n_folds: int) -> pd.DataFrame:
    """Average the folds' test predictions into test.csv and write the submission."""
    id_col = comp.spec.id_column
    frames = []
    for k in range(n_folds):
        path = cfg.oof_path / f"test_fold{k}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run `python -m dontstop predict` for this config")
        frames.append(pd.read_csv(path, dtype={id_col: str}).set_index(id_col).reindex(comp.test[id_col]))
    mean = sum(f[comp.pred_columns].to_numpy(dtype=np.float64) for f in frames) / n_folds
    test = pd.DataFrame(mean, columns=comp.pred_columns)
    test.insert(0, id_col, comp.test[id_col].to_numpy())
    write_csv(cfg.oof_path / "test.csv", test)
    write_csv(cfg.oof_path / "submission.csv", make_submission(comp, test))
    return test
