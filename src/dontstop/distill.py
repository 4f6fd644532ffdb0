"""Self-distillation on soft labels (`dontstop distill <config>`).

For each fold k, teacher fold k (trained without fold k) predicts the fold's own training rows; `train` then
fits student fold k on `alpha * hard + (1 - alpha) * soft`. Classification soft labels are softmax (multiclass)
or sigmoid (binary / multilabel) of the teacher's logits divided by `distill.temperature`; regression soft
labels are the teacher's predictions. Writes `oof/<exp>/soft_fold<k>.csv` (id + `soft_<output>`) and
`soft_fold<k>.json` (teacher, `label_folds`); `train` checks that provenance before using them.
Soft labels on an unlabelled pool come from the pseudo stage (`pseudo.soft: true`) in the same config.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dontstop import data as D
from dontstop.config import Config
from dontstop.io import read_json, write_csv, write_json
from dontstop.leak import check_provenance


def soften(raw: np.ndarray, task: str, temperature: float, head: dict) -> np.ndarray:
    from dontstop.predict import to_predictions

    if task in ("regression", "multi_target_regression"):
        return to_predictions(raw, task, head["target_mean"], head["target_std"])
    return to_predictions(raw / temperature, task)


def run_distill(cfg: Config, log=print) -> None:
    from dontstop.folds import read_fold_file
    from dontstop.models import load_fold_model
    from dontstop.predict import predict_frame
    from dontstop.runtime import make_accelerator

    d, spec = cfg.distill, cfg.competition
    comp = D.load_competition(spec, log=log, need_test=False)
    if not (Path(cfg.oof_dir) / d.teacher / "scores.json").is_file():
        raise FileNotFoundError(f"distill.teacher {d.teacher!r} is not finished: run "
                                f"`bash scripts/train_folds.sh configs/{d.teacher}.yaml`")
    fold_table, _ = read_fold_file(cfg.fold_file, expected_ids=comp.train[spec.id_column])
    fold_of = fold_table.set_index("id")["fold"].reindex(comp.train[spec.id_column]).to_numpy()
    accelerator = make_accelerator(cfg)
    for k in range(int(fold_of.max()) + 1):
        fold_dir = Path(cfg.models_dir) / d.teacher / f"fold{k}"
        model, tokenizer, head = load_fold_model(fold_dir)
        check_provenance(head.get("trained_on_folds"), k, str(fold_dir))  # teacher fold k never saw fold k
        rows = comp.train.iloc[np.flatnonzero(fold_of != k)]
        raw = predict_frame(model, tokenizer, head, comp, rows, accelerator, cfg.train.eval_batch_size)
        soft = soften(raw, head["task"], d.temperature, head)
        frame = pd.DataFrame(soft, columns=[f"soft_{n}" for n in comp.output_names])
        frame.insert(0, spec.id_column, rows[spec.id_column].to_numpy())
        write_csv(cfg.oof_path / f"soft_fold{k}.csv", frame)
        write_json(cfg.oof_path / f"soft_fold{k}.json", {"teacher": d.teacher, "teacher_fold": k,
                                                          "label_folds": head["trained_on_folds"],
                                                          "temperature": d.temperature})
        log(f"distill fold {k}: soft labels for {len(rows)} training rows from {fold_dir}")
        accelerator.free_memory()


def soft_targets(cfg: Config, comp: D.Competition, k: int, ids: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
    """Fold k's soft labels for its training rows `ids` (in that order) and their label provenance, checked."""
    if not cfg.distill.teacher or "distill" not in cfg.stages:
        return None
    path = cfg.oof_path / f"soft_fold{k}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m dontstop distill` for this config first")
    meta = read_json(path.with_suffix(".json"))
    check_provenance(meta.get("label_folds"), k, str(path))
    frame = pd.read_csv(path, dtype={comp.spec.id_column: str}).set_index(comp.spec.id_column)
    soft = frame.reindex(ids)[[f"soft_{n}" for n in comp.output_names]].to_numpy(np.float32)
    if np.isnan(soft).any():
        raise ValueError(f"{path} lacks soft labels for {int(np.isnan(soft).any(1).sum())} of fold {k}'s training rows")
    return soft, list(meta["label_folds"])
