"""The leaky variant of the pseudo-label row, written on purpose so bench/recipe.py can measure it.

Most notebooks pseudo-label a pool with the average of every fold model, and each student fold trains on
those labels. Teacher folds j != k were trained on fold k's labels, so student fold k learns them back, and the
CV it reports is flattered. dontstop refuses such inputs by construction (leak.check_provenance in
pseudo.pseudo_rows). This module builds them anyway (`write_leaky_pseudo`), shows the refusal
(`guard_refusal`), and lets the bench train on them with the check patched out (`leak_guard_disabled`).
Nothing in src/ imports it, and no pipeline command can reach it.

Reads the leak-free pseudo experiment's `pseudo_fold<k>.csv` (and, for the train-texts variant, the teacher's
fold models); writes the leaky experiment's `pseudo_fold<k>.csv` / `.json`, the same file for every k.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd


def all_fold_average(per_fold: list[pd.DataFrame], id_column: str, target_columns: list[str]) -> pd.DataFrame:
    """The notebook way: every teacher fold's pool predictions averaged, one file for every student fold.

    `per_fold[k]` is dontstop's leak-free pseudo_fold<k>.csv (teacher fold k's soft labels on the pool). The
    average carries the labels of every fold, so its `label_folds` is the union: student fold k then trains on
    labels derived from fold k's own labels, which is what dontstop's guard exists to refuse.
    """
    from dontstop.leak import format_label_folds, parse_label_folds

    ids = per_fold[0][id_column].astype(str)
    for k, frame in enumerate(per_fold):
        if set(frame[id_column].astype(str)) != set(ids):
            raise ValueError(f"pseudo_fold{k}.csv labels other pool rows than pseudo_fold0.csv: the all-fold average "
                             f"needs every fold to keep every row (pseudo.threshold 0, fraction 1, balance false)")
    aligned = [f.assign(**{id_column: f[id_column].astype(str)}).set_index(id_column).loc[ids] for f in per_fold]
    out = aligned[0].copy()
    out[target_columns] = np.mean([f[target_columns].to_numpy(np.float64) for f in aligned], axis=0)
    folds = {fold for f in per_fold for cell in f["label_folds"].astype(str).unique()
             for fold in parse_label_folds(cell)}
    out["label_folds"] = format_label_folds(folds)
    return out.reset_index()


def teacher_average_on_train_texts(cfg, log=print) -> pd.DataFrame:
    """The competition's own train texts, labelled by the average of every teacher fold (K-1 of which were
    trained on each text's true label): the pool a notebook gets when its "test" repeats train texts."""
    from dontstop import data as D
    from dontstop.leak import format_label_folds
    from dontstop.models import load_fold_model
    from dontstop.predict import predict_frame, to_predictions
    from dontstop.pseudo import pseudo_targets
    from dontstop.runtime import make_accelerator

    comp = D.load_competition(cfg.competition, log=log, need_test=False)
    accelerator = make_accelerator(cfg)
    preds, folds = [], set()
    for k in range(cfg.folds.n_folds):
        model, tokenizer, head = load_fold_model(Path(cfg.models_dir) / cfg.pseudo.teacher / f"fold{k}")
        raw = predict_frame(model, tokenizer, head, comp, comp.train, accelerator, cfg.train.eval_batch_size)
        preds.append(to_predictions(raw, head["task"], head["target_mean"], head["target_std"]))
        folds |= set(head["trained_on_folds"])
    spec = cfg.competition
    frame = comp.train[[spec.id_column] + spec.text_columns].copy()
    frame[spec.id_column] = "train:" + frame[spec.id_column].astype(str)
    targets = pseudo_targets(np.mean(preds, axis=0), spec.task, cfg.pseudo.soft)
    for i, name in enumerate(comp.output_names):
        frame[f"pseudo_{name}"] = targets[:, i]
    frame["weight"] = cfg.pseudo.weight
    frame["label_folds"] = format_label_folds(folds)
    return frame


def write_leaky_pseudo(cfg, leak_free_dir: Path, with_train_texts: bool, log=print) -> None:
    """Write the all-fold-average pseudo-labels as every student fold's pseudo_fold<k>.csv of `cfg`."""
    from dontstop.io import write_csv, write_json
    from dontstop.leak import parse_label_folds

    if not cfg.pseudo.soft:
        raise ValueError("the all-fold average needs soft pseudo-labels (pseudo.soft: true)")
    spec, n_folds = cfg.competition, cfg.folds.n_folds
    per_fold = [pd.read_csv(leak_free_dir / f"pseudo_fold{k}.csv", dtype={spec.id_column: str, "label_folds": str},
                            keep_default_na=False) for k in range(n_folds)]
    targets = [c for c in per_fold[0].columns if c.startswith("pseudo_")]
    frame = all_fold_average(per_fold, spec.id_column, targets)
    if with_train_texts:
        frame = pd.concat([frame, teacher_average_on_train_texts(cfg, log)], ignore_index=True)
    label_folds = sorted({f for cell in frame["label_folds"].unique() for f in parse_label_folds(cell)})
    for k in range(n_folds):
        write_csv(cfg.oof_path / f"pseudo_fold{k}.csv", frame)
        write_json(cfg.oof_path / f"pseudo_fold{k}.json", {
            "teacher": cfg.pseudo.teacher, "teacher_fold": "all (averaged)", "label_folds": label_folds,
            "n_selected": len(frame), "soft": True, "with_train_texts": with_train_texts,
            "made_by": "bench/recipe.py write_leaky_pseudo: a deliberate leak, NOT `dontstop pseudo`"})
    log(f"{cfg.experiment}: wrote all-fold-average pseudo-labels ({len(frame)} rows, label folds {label_folds}) "
        f"for every student fold")


def guard_refusal(cfg) -> str:
    """What dontstop's own guard says about these files: the exact check `train` runs before fold 0."""
    from dontstop import data as D
    from dontstop.leak import LeakError
    from dontstop.pseudo import pseudo_rows

    comp = D.load_competition(cfg.competition, log=lambda *_: None, need_test=False)
    try:
        pseudo_rows(cfg, comp, 0)
    except LeakError as err:
        return str(err)
    raise AssertionError(f"{cfg.oof_path}: the leak guard accepted all-fold-average pseudo-labels")


@contextlib.contextmanager
def leak_guard_disabled():
    """THE DEMONSTRATION OF A LEAK. dontstop's train stage refuses pseudo-labels that carry fold k's labels
    (leak.check_provenance, called on each pseudo file and each row's label_folds in pseudo.pseudo_rows), and
    has no switch to turn that off. To measure what the refused shortcut would report, this bench replaces
    the check with one that allows everything, only around the leaky rows' training, in this process. The
    results land in their own folders. Their scores.json `provenance` lists fold k among fold k's label
    sources: that list records the leak. Never do this outside a demonstration."""
    with mock.patch("dontstop.pseudo.check_provenance", lambda label_folds, fold, source: None):
        yield


