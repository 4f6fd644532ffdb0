"""Prediction: turn a fold model's outputs into OOF / test predictions, and write the submission.

The `predict` stage re-predicts the test set from the saved fold models (`models/<exp>/fold<k>/`) and
writes `oof/<exp>/test_fold<k>.csv`, the fold-averaged `test.csv` and `submission.csv`. `train` uses the
same functions right after each fold, so both paths give the same numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from accelerate.utils import gather_object

from dontstop.data import Collator, Competition, DataError, LengthGroupedBatchSampler, TextDataset
from dontstop.metrics import get_metric


def make_loader(dataset: TextDataset, batch_size: int, pad_token_id: int, shuffle: bool, seed: int = 0,
                multiple_of: int = 1, num_workers: int = 0) -> torch.utils.data.DataLoader:
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed=seed, shuffle=shuffle)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=Collator(pad_token_id, multiple_of))


@torch.no_grad()
def predict_raw(model, loader, accelerator, n_rows: int) -> np.ndarray:
    """Raw model outputs for every row of the loader's dataset, in dataset order, gathered over processes."""
    was_training = model.training
    model.eval()
    indices, outputs = [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        indices.append(batch["index"].cpu().numpy())
        outputs.append(logits.float().cpu().numpy())
    model.train(was_training)
    local = (np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
             np.concatenate(outputs) if outputs else None)
    parts = gather_object([local]) if accelerator.num_processes > 1 else [local]
    n_outputs = next(p[1].shape[1] for p in parts if p[1] is not None)
    result = np.full((n_rows, n_outputs), np.nan, dtype=np.float32)
    for idx, out in parts:  # sharded loaders may repeat rows to even out batches: same values, any copy
        if out is not None:
            result[idx] = out
    if np.isnan(result).any():
        raise RuntimeError(f"{int(np.isnan(result).any(1).sum())} rows got no prediction (or NaN outputs)")
    return result


def predict_frame(model, tokenizer, head: dict, comp, frame: pd.DataFrame, accelerator, batch_size: int) -> np.ndarray:
    """Raw outputs of a loaded fold model (see models.load_fold_model) for every row of `frame`, in order."""
    from dontstop import data as D

    dataset = D.TextDataset(D.tokenize(comp, frame, tokenizer, head["model"]["max_length"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = make_loader(dataset, batch_size, pad_id, shuffle=False,
                         multiple_of=8 if accelerator.device.type == "cuda" else 1)
    model, loader = accelerator.prepare(model, loader)
    return predict_raw(model, loader, accelerator, len(dataset))


def to_predictions(raw: np.ndarray, task: str, target_mean=None, target_std=None) -> np.ndarray:
    """Outputs in the competition's units: values for regression, probabilities for classification."""
    if task in ("regression", "multi_target_regression"):
        if target_mean is not None:
            return raw * np.asarray(target_std, dtype=np.float32) + np.asarray(target_mean, dtype=np.float32)
        return raw
    if task == "multiclass":
        shifted = raw - raw.max(1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-raw))


def predictions_frame(ids, preds: np.ndarray, pred_columns: list[str], id_column: str) -> pd.DataFrame:
    frame = pd.DataFrame(preds, columns=pred_columns)
    frame.insert(0, id_column, list(ids))
    return frame


def make_submission(comp: Competition, test_preds: pd.DataFrame) -> pd.DataFrame:
    """The submission in the sample submission's format (its ids, order and columns)."""
    spec = comp.spec
    metric = get_metric(spec.metric, spec.task)
    id_col = spec.id_column
    by_id = test_preds.set_index(id_col)
    preds = {name: by_id[f"pred_{name}"] for name in comp.output_names}
    if comp.sample_submission is not None:
        sample = comp.sample_submission
        missing = sorted(set(sample[id_col]) - set(by_id.index))
        if missing:
            raise DataError(f"{spec.sample_submission}: {len(missing)} ids have no test prediction, e.g. {missing[:5]}")
        columns = [c for c in sample.columns if c != id_col]
    else:
        sample = test_preds[[id_col]]
        columns = list(spec.target_columns)
    out = pd.DataFrame({id_col: sample[id_col].to_numpy()})
    order = sample[id_col].to_numpy()
    for column in columns:
        if spec.task == "multiclass" and column == spec.target_columns[0]:
            probs = np.stack([preds[c].reindex(order).to_numpy() for c in comp.classes], 1)
            out[column] = _cast_labels(np.asarray(comp.classes)[probs.argmax(1)], comp.train[column])
        elif column in preds:
            values = preds[column].reindex(order).to_numpy()
            if metric.uses_labels and spec.task in ("binary", "multilabel"):
                values = (values >= 0.5).astype(int)
            out[column] = values
        else:
            raise DataError(f"{spec.sample_submission}: column {column!r} is neither a target nor a class "
                            f"({comp.output_names})")
    return out


def _cast_labels(labels: np.ndarray, train_column: pd.Series) -> np.ndarray:
    """Class names are strings internally; give them back the dtype train used (e.g. int labels)."""
    if pd.api.types.is_integer_dtype(train_column):
        return labels.astype(np.int64)
    return labels


def run_predict(cfg, folds: list[int] | None = None) -> pd.DataFrame:
    """The `predict` stage: test predictions of every saved fold model, fold-averaged, and the submission."""
    from dontstop import data as D
    from dontstop.models import load_fold_model
    from dontstop.report import write_test_outputs
    from dontstop.runtime import make_accelerator, make_logger

    accelerator = make_accelerator(cfg)
    log = make_logger(cfg.oof_path / "predict.log", accelerator.is_main_process)
    comp = D.load_competition(cfg.competition, log=log)
    if comp.test is None:
        raise ValueError(f"{cfg.experiment}: competition.test is not set, there is nothing to predict")
    fold_dirs = sorted(cfg.models_path.glob("fold*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)
    n_folds = len([p for p in fold_dirs if p.name[4:].isdigit()])
    if n_folds == 0:
        raise FileNotFoundError(f"no fold models under {cfg.models_path}; run `python -m dontstop train` first")
    for k in (folds if folds is not None else range(n_folds)):
        model, tokenizer, head = load_fold_model(cfg.models_path / f"fold{k}")
        if head["output_names"] != comp.output_names:
            raise ValueError(f"{cfg.models_path / f'fold{k}'} predicts {head['output_names']}, but the config's "
                             f"competition has {comp.output_names}")
        raw = predict_frame(model, tokenizer, head, comp, comp.test, accelerator, cfg.train.eval_batch_size)
        preds = to_predictions(raw, head["task"], head["target_mean"], head["target_std"])
        if accelerator.is_main_process:
            from dontstop.io import write_csv
            write_csv(cfg.oof_path / f"test_fold{k}.csv",
                      predictions_frame(comp.test[comp.spec.id_column], preds, comp.pred_columns, comp.spec.id_column))
        log(f"fold {k}: predicted {len(comp.test)} test rows")
        accelerator.free_memory()
    test = write_test_outputs(cfg, comp, n_folds) if accelerator.is_main_process else None
    log(f"wrote {cfg.oof_path / 'test.csv'} and {cfg.oof_path / 'submission.csv'}")
    return test
