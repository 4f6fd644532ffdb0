"""OOF blending (`dontstop ensemble <config>`): the recipe's last step, with an honest CV.

Reads the member experiments' `oof/<m>/oof.csv`, `test.csv` and `scores.json`. The blend used to score fold
k is fitted on the OOF rows of the other folds only (nested), so the reported `cv` carries no optimism;
`cv_in_sample` (fitted and scored on all rows) is reported beside it. Writes `oof/<ens>/` like any
experiment: `oof.csv` (the honest nested OOF), `weights.json` (the blend fitted on all OOF rows), `test.csv`
and `submission.csv` (that blend applied to the members' test predictions), `scores.json`.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dontstop import data as D
from dontstop.blend import apply_blend, nested_cv
from dontstop.config import Config
from dontstop.io import git_commit, package_versions, write_csv, write_json
from dontstop.metrics import get_metric, score
from dontstop.predict import make_submission


class EnsembleError(ValueError):
    """A member cannot be blended; the message names it."""


def resolve_members(cfg: Config) -> list[str]:
    root = Path(cfg.oof_dir)
    available = sorted(p.name for p in root.iterdir() if (p / "scores.json").is_file()) if root.is_dir() else []
    available = [name for name in available if name != cfg.experiment]
    members: list[str] = []
    for pattern in cfg.ensemble.members:
        matched = fnmatch.filter(available, pattern)
        if not matched and any(ch in pattern for ch in "*?["):
            continue  # a glob blends whatever exists; only a named member must be there
        if not matched:
            raise EnsembleError(f"ensemble.members: {pattern!r} matches no finished experiment under {root} "
                                f"(finished: {', '.join(available) or 'none'})")
        members += [m for m in matched if m not in members]
    if not members:
        raise EnsembleError("ensemble.members is empty: list experiment ids or globs to blend")
    return members


def load_members(cfg: Config, comp: D.Competition, members: list[str]) -> tuple[np.ndarray, np.ndarray | None, str]:
    """OOF (K, n, outputs) in train order, test (K, n_test, outputs) in test order, and the shared fold hash."""
    root = Path(cfg.oof_dir)
    id_col = comp.spec.id_column
    train_ids = comp.train[id_col].to_numpy()
    oofs, tests, hashes = [], [], {}
    for name in members:
        scores = json.loads((root / name / "scores.json").read_text())
        if scores.get("metric") != comp.spec.metric or scores.get("task") not in (None, comp.spec.task):
            raise EnsembleError(f"member {name!r} was scored with {scores.get('metric')} / {scores.get('task')}, "
                                f"the ensemble uses {comp.spec.metric} / {comp.spec.task}")
        hashes.setdefault(scores.get("fold_file_hash"), []).append(name)
        oof = pd.read_csv(root / name / "oof.csv", dtype={id_col: str})
        missing_cols = [c for c in comp.pred_columns if c not in oof.columns]
        if missing_cols:
            raise EnsembleError(f"member {name!r}: oof.csv lacks {missing_cols}")
        if set(oof[id_col]) != set(train_ids) or len(oof) != len(train_ids):
            raise EnsembleError(f"member {name!r}: its OOF ids differ from {comp.spec.train} "
                                f"({len(oof)} rows vs {len(train_ids)})")
        values = oof.set_index(id_col).reindex(train_ids)[comp.pred_columns].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise EnsembleError(f"member {name!r}: {int((~np.isfinite(values)).any(1).sum())} OOF rows are NaN/inf")
        oofs.append(values)
        if comp.test is not None:
            path = root / name / "test.csv"
            if not path.is_file():
                raise EnsembleError(f"member {name!r} has no test predictions ({path}); run its predict stage")
            test = pd.read_csv(path, dtype={id_col: str}).set_index(id_col).reindex(comp.test[id_col])
            test_values = test[comp.pred_columns].to_numpy(dtype=np.float64)
            if not np.isfinite(test_values).all():
                raise EnsembleError(f"member {name!r}: test.csv is missing ids or holds NaN predictions")
            tests.append(test_values)
    if len(hashes) > 1:
        shown = "; ".join(f"{str(h)[:12]}: {', '.join(n)}" for h, n in hashes.items())
        raise EnsembleError(f"members were trained on different fold files ({shown}); OOFs are not comparable")
    return np.stack(oofs), (np.stack(tests) if tests else None), next(iter(hashes))


def _metric_shape(comp: D.Competition, preds: np.ndarray) -> np.ndarray:
    """(K, n, outputs) -> what the metric takes per member: drop the last axis for single-output tasks."""
    return preds[..., 0] if preds.shape[-1] == 1 and comp.spec.task != "multiclass" else preds


def blend_members(blend: dict, comp: D.Competition, member_preds: np.ndarray) -> np.ndarray:
    """A fitted blend (weights.json) applied to the members' fold-averaged test predictions (K, n, outputs);
    returns (n, outputs) in the competition's units. Used here and by offline `infer`."""
    blended = apply_blend(blend, _metric_shape(comp, np.asarray(member_preds, dtype=np.float64)))
    return np.asarray(blended).reshape(member_preds.shape[1], -1)


def run_ensemble(cfg: Config, log=print) -> dict:
    from dontstop.folds import read_fold_file

    comp = D.load_competition(cfg.competition, log=log)
    members = resolve_members(cfg)
    oof, test, fold_hash = load_members(cfg, comp, members)
    fold_table, current_hash = read_fold_file(cfg.fold_file, expected_ids=comp.train[cfg.competition.id_column])
    if current_hash != fold_hash:
        raise EnsembleError(f"members were trained on fold file {str(fold_hash)[:12]}, but {cfg.fold_file} is now "
                            f"{current_hash[:12]}; retrain them first")
    fold_of = fold_table.set_index("id")["fold"].reindex(comp.train[cfg.competition.id_column]).to_numpy()
    spec, e = comp.spec, cfg.ensemble
    y = D.metric_targets(comp)
    result = nested_cv(e.method, _metric_shape(comp, oof), y, fold_of, spec.metric, spec.task, per_target=e.per_target)
    metric = get_metric(spec.metric, spec.task)
    member_cv = {name: score(metric.name, spec.task, y, _metric_shape(comp, oof)[i]) for i, name in enumerate(members)}
    out = cfg.oof_path
    honest = np.asarray(result["oof"]).reshape(len(y), -1)
    oof_frame = pd.DataFrame({spec.id_column: comp.train[spec.id_column].to_numpy(), "fold": fold_of})
    for column in spec.target_columns:
        oof_frame[column] = comp.train[column].to_numpy()
    for i, column in enumerate(comp.pred_columns):
        oof_frame[column] = honest[:, i]
    write_csv(out / "oof.csv", oof_frame)
    n_folds = int(fold_of.max()) + 1
    write_json(out / "weights.json", {"members": members, **result["blend"],
                                      "fitted_on": "all OOF rows (the nested per-fold blends only score the CV)"})
    if test is not None:
        blended = blend_members(result["blend"], comp, test)
        test_frame = pd.DataFrame(blended, columns=comp.pred_columns)
        test_frame.insert(0, spec.id_column, comp.test[spec.id_column].to_numpy())
        write_csv(out / "test.csv", test_frame)
        write_csv(out / "submission.csv", make_submission(comp, test_frame))
    from dontstop.report import constant_oof

    scores = {
        "experiment": cfg.experiment, "task": spec.task, "metric": metric.name,
        "greater_is_better": metric.greater_is_better, "cv": result["cv"], "cv_in_sample": result["cv_in_sample"],
        "fold_scores": result["fold_scores"], "fold_mean": float(np.mean(result["fold_scores"])),
        "fold_std": float(np.std(result["fold_scores"])),
        "baseline_cv": score(metric.name, spec.task, y, constant_oof(comp, fold_of)),
        "member_cv": member_cv, "members": members, "method": e.method, "n_folds": n_folds,
        "fold_file": str(cfg.fold_file), "fold_file_hash": fold_hash, "backbone": "ensemble", "stages": ["ensemble"],
        # the blend that scores fold k was fitted on the other folds' OOF rows only
        "provenance": {f"fold{k}": sorted(set(range(n_folds)) - {k}) for k in range(n_folds)},
        "wall_time_s": {}, "git_commit": git_commit(), "versions": package_versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "config": cfg.to_dict(),
    }
    write_json(out / "scores.json", scores)
    best_member = (max if metric.greater_is_better else min)(member_cv.values())
    log(f"{cfg.experiment}: {e.method} blend of {len(members)} members: CV {metric.name} {result['cv']:.5f} (nested, "
        f"honest); in-sample {result['cv_in_sample']:.5f}; best single member {best_member:.5f}")
    return scores
