"""The leak guard: a pure check that whatever trains the fold-k model never came from labels of fold k.

Every artefact that can carry label information (an MLM checkpoint made with task-guided masking, and later
pseudo-labels, soft labels, blend weights) records `label_folds`: the folds whose labels it was fit on. Before
fold k uses it, `check_provenance` refuses it if k is among them. There is no switch to turn this off.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


class LeakError(ValueError):
    """An input to fold k's training was fit on fold k's labels."""


def check_provenance(label_folds: Iterable[int] | None, fold: int, source: str) -> None:
    """Allowed when `fold` is not among `label_folds`; otherwise raise naming the source and the folds."""
    folds = sorted(int(f) for f in (label_folds or []))
    if fold in folds:
        raise LeakError(f"leak: {source} was fit on the labels of folds {folds}, which include fold {fold}; "
                        f"it cannot be used to train the fold-{fold} model (make a per-fold artefact that "
                        f"excludes fold {fold})")


def format_label_folds(folds) -> str:
    """The per-row `label_folds` cell of a pseudo-label file: "0,2,3" (empty when no labels were used)."""
    return ",".join(str(int(f)) for f in sorted(folds))


def parse_label_folds(cell) -> list[int]:
    return [int(f) for f in str(cell).split(",") if f.strip()]


def fold_backbone(backbone_dir: str, fold: int) -> str:
    """The backbone fold `fold` trains from: `<dir>/fold<k>` when the MLM stage made one per fold (its masking
    used labels), else `<dir>` itself; either way checked against the label provenance it recorded."""
    path = Path(backbone_dir)
    per_fold = path / f"fold{fold}"
    if (path / "fold0").is_dir() or per_fold.is_dir():
        if not per_fold.is_dir():
            raise FileNotFoundError(f"{path} holds per-fold MLM checkpoints but none for fold {fold} ({per_fold})")
        path = per_fold
    scores = path / "mlm_scores.json"
    if scores.is_file():
        check_provenance(json.loads(scores.read_text()).get("label_folds"), fold, str(path))
    return str(path)
