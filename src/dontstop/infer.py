"""`dontstop infer --bundle DIR --test test.csv --out submission.csv`: the offline Kaggle kernel's whole job.

Needs nothing but the bundle written by `dontstop package` and the test file: no config, no train file, no
hub. For each member, each fold model in turn is loaded, predicts the test set in length-sorted batches
(fp16 autocast on a GPU, fp32 on CPU) and is freed before the next, so memory holds one model at a time.
Folds are averaged in the competition's units (probabilities, target scale), members blended with the
ensemble's weights.json, and the submission written in the sample submission's ids, order and columns.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

OFFLINE_SWITCHES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1"}


def go_offline() -> None:
    """Turn the Hugging Face libraries' offline switches on, also when they were imported before us."""
    os.environ.update(OFFLINE_SWITCHES)
    if "huggingface_hub" in sys.modules:  # its constants were read at import time
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True


def _member_competition(layout: dict, member: dict, test_path: str, log):
    from dontstop.config import CompetitionConfig
    from dontstop.data import Competition, load_test

    spec = CompetitionConfig(
        name=layout["name"], train="", test=str(test_path), id_column=layout["id_column"],
        text_columns=member["text"]["text_columns"], text_pair=member["text"]["text_pair"],
        nan_text=member["text"]["nan_text"], target_columns=layout["target_columns"], task=layout["task"],
        metric=layout["metric"])
    # no train file in a kernel: an empty frame carries the label dtypes the submission must keep
    train = pd.DataFrame({c: pd.Series([], dtype=layout["train_dtypes"].get(c, "object"))
                          for c in layout["target_columns"]})
    return Competition(spec, train, load_test(spec, test_path, log), None, layout["classes"])


def _sample_submission(layout: dict, comp, sample_path: str | None) -> pd.DataFrame | None:
    """The sample submission given on the command line, else its columns as recorded in the bundle with the
    test file's ids in test order (Kaggle's sample submissions follow the test file)."""
    from dontstop.data import DataError, read_csv

    id_col = layout["id_column"]
    if sample_path:
        sample = read_csv(sample_path, "sample_submission")
        if id_col not in sample.columns:
            raise DataError(f"{sample_path}: no id column {id_col!r}; its columns are {list(sample.columns)}")
        sample[id_col] = sample[id_col].astype(str)
        comp.spec.sample_submission = str(sample_path)
        return sample
    if not layout["sample_columns"]:
        return None
    comp.spec.sample_submission = "the sample submission layout recorded in the bundle"
    return pd.DataFrame({c: comp.test[id_col].to_numpy() if c == id_col else 0 for c in layout["sample_columns"]})


def run_infer(bundle: str | Path, test: str | Path, out: str | Path, sample: str | None = None,
              batch_size: int | None = None, log=print) -> pd.DataFrame:
    go_offline()
    import torch
    from accelerate import Accelerator

    from dontstop.bundle import read_manifest
    from dontstop.ensemble import blend_members
    from dontstop.io import ensure_writable_dir, write_csv
    from dontstop.models import load_fold_model
    from dontstop.predict import make_submission, predict_frame, predictions_frame, to_predictions

    bundle = Path(bundle)
    ensure_writable_dir(Path(out).resolve().parent, "output directory")
    manifest = read_manifest(bundle)
    layout = manifest["competition"]
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="fp16" if cuda else "no")
    member_preds, comp = [], None
    for member in manifest["members"]:
        comp = _member_competition(layout, member, str(test), log)
        fold_sum = None
        for k, fold in enumerate(member["folds"]):
            model, tokenizer, head = load_fold_model(bundle / fold["dir"])
            raw = predict_frame(model, tokenizer, head, comp, comp.test, accelerator,
                                batch_size or member["eval_batch_size"])
            preds = to_predictions(raw, head["task"], head["target_mean"], head["target_std"]).astype(np.float64)
            fold_sum = preds if fold_sum is None else fold_sum + preds
            del model  # one model in memory at a time
            accelerator.free_memory()
            gc.collect()
            log(f"{member['name']} fold {k}: predicted {len(comp.test)} rows")
        member_preds.append(fold_sum / len(member["folds"]))
    if manifest["blend"] is not None:
        blended = blend_members(manifest["blend"], comp, np.stack(member_preds))
    else:
        blended = member_preds[0]
    id_col = layout["id_column"]
    test_preds = predictions_frame(comp.test[id_col], blended, comp.pred_columns, id_col)
    comp.sample_submission = _sample_submission(layout, comp, sample)
    submission = make_submission(comp, test_preds)
    write_csv(out, submission)
    log(f"wrote {out}: {len(submission)} rows, columns {list(submission.columns)}")
    return submission
