"""Leak-free pseudo-labels (`dontstop pseudo <config>`): for each fold k, ONLY the teacher's fold-k model
(trained without fold k's labels) labels the unlabelled pool; never an average over the teacher's folds,
which saw fold k.

Reads the teacher's `models/<teacher>/fold<k>/` and the pool (`pseudo.pool`, de-duplicated against train, so
a train row can never come back as its own pseudo-label). Writes `oof/<exp>/pseudo_fold<k>.csv` (id, text
columns, `pseudo_<output>` targets, `weight`, `label_folds`) and `pseudo_fold<k>.json` (its provenance).
`train` adds them to fold k's training rows and checks their provenance first (`leak.check_provenance`).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from dontstop import data as D
from dontstop.config import Config
from dontstop.io import read_json, write_csv, write_json
from dontstop.leak import check_provenance, format_label_folds, parse_label_folds


def _norm(texts: pd.Series) -> pd.Series:
    return texts.map(lambda t: re.sub(r"\s+", " ", str(t)).strip().lower())


def load_pool(cfg: Config, comp: D.Competition, log=print) -> pd.DataFrame:
    """Pool rows (pseudo.pool, plus test if pseudo.label_test) minus any text already in train."""
    spec, p = comp.spec, cfg.pseudo
    frames = []
    if p.pool:
        pool = D.read_csv(p.pool, "pseudo.pool")
        missing = [c for c in spec.text_columns if c not in pool.columns]
        if missing:
            raise D.DataError(f"{p.pool}: pool lacks the text column(s) {missing} (competition.text_columns)")
        if spec.id_column not in pool.columns:
            pool[spec.id_column] = [f"pool{i}" for i in range(len(pool))]
        frames.append(pool[[spec.id_column] + spec.text_columns])
    if p.label_test and comp.test is not None:
        frames.append(comp.test[[spec.id_column] + spec.text_columns])
    pool = pd.concat(frames, ignore_index=True)
    pool[spec.id_column] = pool[spec.id_column].astype(str)
    pool = pool.drop_duplicates(subset=spec.id_column)
    pool[spec.text_columns] = pool[spec.text_columns].fillna("").astype(str)
    joined = lambda df: _norm(df[spec.text_columns].agg(" ".join, axis=1))  # noqa: E731
    in_train = joined(pool).isin(set(joined(comp.train)))
    if in_train.any():
        log(f"pseudo: dropped {int(in_train.sum())} pool rows whose text is in train")
    pool = pool[~in_train & ~joined(pool).duplicated()].reset_index(drop=True)
    if pool.empty:
        raise D.DataError("pseudo: the pool is empty after removing texts that are in train")
    return pool


def select_rows(preds: np.ndarray, task: str, p, rng: np.random.Generator) -> np.ndarray:
    """Indices of pool rows to keep: confidence threshold, class balance, then a sampled fraction."""
    keep = np.arange(len(preds))
    if task in D.CLASSIFICATION and p.threshold > 0:
        if task == "multiclass":
            confident = preds.max(1) >= p.threshold
        else:  # binary / multilabel: every label confidently 0 or 1
            confident = (np.maximum(preds, 1 - preds) >= p.threshold).all(1)
        keep = keep[confident]
    if task in ("binary", "multiclass") and p.balance and len(keep):
        label = preds[keep].argmax(1) if task == "multiclass" else (preds[keep, 0] >= 0.5).astype(int)
        counts = np.bincount(label)
        smallest = counts[counts > 0].min()
        keep = np.concatenate([rng.permutation(keep[label == c])[:smallest] for c in np.flatnonzero(counts)])
    if p.fraction < 1:
        keep = rng.permutation(keep)[: int(round(p.fraction * len(keep)))]
    return np.sort(keep)


def pseudo_targets(preds: np.ndarray, task: str, soft: bool) -> np.ndarray:
    """In the training target layout (target_matrix): values, 0/1 labels or class one-hots (or probabilities)."""
    if soft or task in ("regression", "multi_target_regression"):
        return preds
    if task == "multiclass":
        return np.eye(preds.shape[1], dtype=np.float32)[preds.argmax(1)]
    return (preds >= 0.5).astype(np.float32)


def run_pseudo(cfg: Config, log=print) -> None:
    from dontstop.models import load_fold_model
    from dontstop.predict import predict_frame, to_predictions
    from dontstop.runtime import make_accelerator

    p, spec = cfg.pseudo, cfg.competition
    comp = D.load_competition(spec, log=log)
    pool = load_pool(cfg, comp, log)
    if not (Path(cfg.oof_dir) / p.teacher / "scores.json").is_file():
        raise FileNotFoundError(f"pseudo.teacher {p.teacher!r} is not finished ({Path(cfg.oof_dir) / p.teacher}"
                                f"/scores.json missing): run `bash scripts/train_folds.sh configs/{p.teacher}.yaml`")
    n_folds = read_json(Path(cfg.oof_dir) / p.teacher / "scores.json")["n_folds"]
    accelerator = make_accelerator(cfg)
    for k in range(n_folds):
        all_preds, label_folds = [], set()
        for teacher in [p.teacher, *p.agree_with]:
            fold_dir = Path(cfg.models_dir) / teacher / f"fold{k}"
            model, tokenizer, head = load_fold_model(fold_dir)
            # the leak rule as code: a model that labels student fold k's pool never saw fold k's labels
            check_provenance(head.get("trained_on_folds"), k, str(fold_dir))
            if head["output_names"] != comp.output_names:
                raise ValueError(f"teacher {fold_dir} predicts {head['output_names']}, the competition has "
                                 f"{comp.output_names}")
            raw = predict_frame(model, tokenizer, head, comp, pool, accelerator, cfg.train.eval_batch_size)
            all_preds.append(to_predictions(raw, head["task"], head["target_mean"], head["target_std"]))
            label_folds |= set(head["trained_on_folds"])
            accelerator.free_memory()
        preds = np.mean(all_preds, axis=0)
        agree = np.arange(len(preds))
        if p.max_std > 0 and len(all_preds) > 1:  # regression: keep rows the teachers agree on
            agree = np.flatnonzero(np.std(all_preds, axis=0).max(1) <= p.max_std)
        head = {**head, "trained_on_folds": sorted(label_folds)}
        keep = agree[select_rows(preds[agree], spec.task, p, np.random.default_rng([p.seed, k]))]
        targets = pseudo_targets(preds[keep], spec.task, p.soft)
        frame = pool.iloc[keep].reset_index(drop=True).copy()
        for i, name in enumerate(comp.output_names):
            frame[f"pseudo_{name}"] = targets[:, i]
        frame["weight"] = p.weight
        frame["label_folds"] = format_label_folds(head["trained_on_folds"])
        write_csv(cfg.oof_path / f"pseudo_fold{k}.csv", frame)
        write_json(cfg.oof_path / f"pseudo_fold{k}.json", {
            "teacher": p.teacher, "agree_with": p.agree_with, "teacher_fold": k, "label_folds": head["trained_on_folds"],
            "n_pool": len(pool), "n_selected": int(len(keep)), "soft": p.soft, "threshold": p.threshold})
        log(f"pseudo fold {k}: fold-{k} models of {[p.teacher, *p.agree_with]} (labels of folds "
            f"{head['trained_on_folds']}) kept {len(keep)}/{len(pool)} pool rows")


def pseudo_rows(cfg: Config, comp: D.Competition, k: int) -> pd.DataFrame | None:
    """Fold k's pseudo-labelled rows, after checking every row's label provenance excludes fold k."""
    if not cfg.pseudo.teacher or "pseudo" not in cfg.stages:
        return None
    path = cfg.oof_path / f"pseudo_fold{k}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m dontstop pseudo` for this config first")
    frame = pd.read_csv(path, dtype={comp.spec.id_column: str, "label_folds": str}, keep_default_na=False)
    meta = read_json(path.with_suffix(".json"))
    check_provenance(meta.get("label_folds"), k, str(path))
    for folds in frame["label_folds"].unique():  # per row too: a hand-edited or concatenated file is caught
        check_provenance(parse_label_folds(folds), k, f"{path} (rows with label_folds={folds})")
    return frame
