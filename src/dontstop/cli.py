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
OTHER = {"compare": "local leaderboard of every experiment under oof/ (no config)",
         "package": "bundle an experiment or ensemble as a Kaggle dataset folder (weights, tokenizer, wheel)",
         "infer": "offline submission from a bundle (no config, no hub): what the Kaggle kernel runs"}


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
    p = sub.add_parser("package", help=OTHER["package"], description=OTHER["package"])
    p.add_argument("config", help="experiment or ensemble YAML, e.g. configs/default.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder (replaced if it holds an old bundle)")
    p.add_argument("--id", dest="dataset_id", metavar="USER/SLUG", help="Kaggle dataset id (default: package.dataset_id)")
    p.add_argument("--title", help="Kaggle dataset title (default: package.title)")
    p.add_argument("--fp16", action="store_true", default=None, help="store weights in fp16 (half the size)")
    p.add_argument("--upload", action="store_true", help="create or version the dataset with the kaggle CLI")
    p = sub.add_parser("infer", help=OTHER["infer"], description=OTHER["infer"])
    p.add_argument("--bundle", required=True, metavar="DIR", help="folder written by `dontstop package`")
    p.add_argument("--test", required=True, metavar="CSV", help="the competition's test file")
    p.add_argument("--out", required=True, metavar="CSV", help="where to write the submission")
    p.add_argument("--sample", metavar="CSV", help="sample submission (default: its layout recorded in the bundle, "
                                                  "with the test file's ids in order)")
    p.add_argument("--batch-size", type=int, metavar="N", help="prediction batch size (default: as trained)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "infer":  # before anything imports the Hugging Face libraries
        from dontstop.infer import go_offline
        go_offline()
    from dontstop.config import ConfigError, load_config
    from dontstop.data import DataError

    try:
        if args.stage == "compare":
            from dontstop.compare import run_compare
            run_compare(args.root, args.baseline, args.only, args.csv, args.markdown, args.plot)
            return 0
        if args.stage == "infer":
            from dontstop.infer import run_infer
            run_infer(args.bundle, args.test, args.out, sample=args.sample, batch_size=args.batch_size)
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
        elif args.stage == "package":
            from dontstop.bundle import run_package
            run_package(cfg, args.out, dataset_id=args.dataset_id, title=args.title, fp16=args.fp16,
                        upload=args.upload)
        elif args.stage == "predict":
            from dontstop.predict import run_predict
            run_predict(cfg, folds=args.fold)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, PermissionError, ValueError, ImportError) as err:
        if os.environ.get("DONTSTOP_DEBUG"):
            raise
        print(f"dontstop {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0
