"""Command line: `python -m dontstop <stage> <config.yaml> [key=value ...] [--fold K] [--force]`."""
from __future__ import annotations

import argparse
import os
import sys

STAGES = {
    "folds": "write the competition's fold file (id -> fold), shared by every experiment",
    "mlm": "continued masked-LM pretraining on the competition text -> models/mlm/<name>/",
    "train": "K-fold fine-tuning: OOF + test predictions, scores.json, submission.csv",
    "predict": "re-predict the test set from the saved fold models",
    "pseudo": "leak-free pseudo-labels: teacher fold k labels the unlabelled pool for student fold k",
    "distill": "self-distillation: soft labels for fold k's training rows from teacher fold k",
    "ensemble": "blend finished experiments' OOF predictions (nested, honest CV) -> weights.json, submission",
}
OTHER = {"compare": "local leaderboard of every experiment under oof/ (no config)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dontstop", description="Leak-free K-fold fine-tuning for Kaggle NLP competitions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {name:<10} {text}" for name, text in {**STAGES, **OTHER}.items())
        + "\n\nexample: python -m dontstop train configs/default.yaml train.lr=3e-5 --fold 0")
    sub = parser.add_subparsers(dest="stage", metavar="stage", required=True)
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="experiment YAML, e.g. configs/default.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. train.lr=3e-5")
        p.add_argument("--force", action="store_true", help="redo work that is already finished / replace results")
        if name in ("train", "predict"):
            p.add_argument("--fold", type=int, action="append", metavar="K",
                           help="only fold K (repeatable); default: every fold")
    p = sub.add_parser("compare", help=OTHER["compare"], description=OTHER["compare"])
    p.add_argument("root", nargs="?", default="oof", help="folder of experiments (default: oof)")
    p.add_argument("--baseline", metavar="EXP", help="add per-fold paired differences against EXP")
    p.add_argument("--only", metavar="EXP", action="append", help="rank only these experiments (repeatable)")
    p.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--plot", metavar="DIR", help="write fold_scores.png and oof_correlation.png into DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dontstop.config import ConfigError, load_config
    from dontstop.data import DataError

    try:
        if args.stage == "compare":
            from dontstop.compare import run_compare
            run_compare(args.root, args.baseline, args.only, args.csv, args.markdown, args.plot)
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.stage == "folds":
            from dontstop.folds import run_folds
            run_folds(cfg, force=args.force)
        elif args.stage == "mlm":
            from dontstop.mlm import run_mlm
            run_mlm(cfg, force=args.force)
        elif args.stage == "train":
            from dontstop.train import run_train
            run_train(cfg, folds=args.fold, force=args.force)
        elif args.stage == "pseudo":
            from dontstop.pseudo import run_pseudo
            run_pseudo(cfg)
        elif args.stage == "distill":
            from dontstop.distill import run_distill
            run_distill(cfg)
        elif args.stage == "ensemble":
            from dontstop.ensemble import run_ensemble
            run_ensemble(cfg)
        elif args.stage == "predict":
            from dontstop.predict import run_predict
            run_predict(cfg, folds=args.fold)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, PermissionError, ValueError, ImportError) as err:
        if os.environ.get("DONTSTOP_DEBUG"):
            raise
        print(f"dontstop {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0
