"""bench/recipe.py's own logic, without models: the leaky pseudo-label writer (and that dontstop's guard refuses
its files unless the bench patches the guard out), and the report's paired-difference and inflation maths."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import recipe_leak  # noqa: E402
import recipe_report  # noqa: E402


def _per_fold_pseudo(n_folds: int = 3) -> list[pd.DataFrame]:
    """What `dontstop pseudo` writes: fold k's pool rows labelled by teacher fold k (labels of every fold but k)."""
    return [pd.DataFrame({"id": ["p2", "p0", "p1"], "text": ["c", "a", "b"],
                          "pseudo_target": [0.1 * k + 0.2, 0.1 * k, 0.1 * k + 0.1], "weight": 1.0,
                          "label_folds": ",".join(str(f) for f in range(n_folds) if f != k)})
            for k in range(n_folds)]


def test_all_fold_average_averages_every_teacher_fold_and_carries_every_folds_labels():
    from dontstop.leak import LeakError, check_provenance, parse_label_folds

    frames = _per_fold_pseudo()
    frames[1] = frames[1].iloc[[2, 0, 1]]  # row order may differ per fold: rows are matched by id
    leaky = recipe_leak.all_fold_average(frames, "id", ["pseudo_target"]).set_index("id")
    assert leaky.loc["p0", "pseudo_target"] == pytest.approx(0.1)  # mean of 0.0, 0.1, 0.2
    assert leaky.loc["p2", "pseudo_target"] == pytest.approx(0.3)
    assert leaky.loc["p1", "text"] == "b"
    assert set(leaky["label_folds"]) == {"0,1,2"}
    for k in range(3):  # the union includes every student fold: the guard refuses it for each of them
        with pytest.raises(LeakError, match=f"include fold {k}"):
            check_provenance(parse_label_folds(leaky["label_folds"].iloc[0]), k, "leaky")


def test_all_fold_average_needs_the_same_rows_in_every_fold():
    frames = _per_fold_pseudo()
    frames[2] = frames[2].iloc[:2]  # a threshold / fraction kept other rows in fold 2
    with pytest.raises(ValueError, match="pseudo_fold2.csv labels other pool rows"):
        recipe_leak.all_fold_average(frames, "id", ["pseudo_target"])


def test_leaky_files_are_refused_by_train_unless_the_guard_is_patched(tmp_path):
    from dontstop import data as D
    from dontstop.config import config_from_dict
    from dontstop.pseudo import pseudo_rows

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"id": [f"t{i}" for i in range(12)], "text": [f"tweet {i}" for i in range(12)],
                          "target": rng.integers(0, 2, 12)})
    train.to_csv(tmp_path / "train.csv", index=False)
    leak_free = tmp_path / "oof" / "tweets_pseudo"
    leak_free.mkdir(parents=True)
    for k, frame in enumerate(_per_fold_pseudo()):
        frame.to_csv(leak_free / f"pseudo_fold{k}.csv", index=False)
    cfg = config_from_dict({
        "stages": ["folds", "pseudo", "train"], "oof_dir": str(tmp_path / "oof"),
        "competition": {"name": "t", "train": str(tmp_path / "train.csv"), "target_columns": ["target"],
                        "task": "binary", "metric": "f1"},
        "folds": {"n_folds": 3}, "pseudo": {"teacher": "tweets_baseline", "pool": "unused.csv"}},
        experiment="tweets_pseudo_leaky")
    recipe_leak.write_leaky_pseudo(cfg, leak_free, with_train_texts=False, log=lambda *_: None)

    message = recipe_leak.guard_refusal(cfg)  # train's own check, on the file the bench wrote
    assert "leak:" in message and "pseudo_fold0.csv" in message
    comp = D.load_competition(cfg.competition, log=lambda *_: None, need_test=False)
    with recipe_leak.leak_guard_disabled():
        rows = pseudo_rows(cfg, comp, 1)
    assert sorted(rows["id"]) == ["p0", "p1", "p2"] and set(rows["label_folds"]) == {"0,1,2"}
    assert "leak:" in recipe_leak.guard_refusal(cfg)  # the patch ends with its block


def _row(cv, folds, seeds=(0, 1), holdout=()):
    return {"row": "r", "text": "", "leaky": False, "seeds": list(seeds), "cv": list(cv),
            "fold_scores": [list(f) for f in folds], "holdout": list(holdout), "wall_s": [10.0, 12.0]}


def test_summarise_pairs_folds_with_the_same_seeds_baseline():
    baseline = _row([0.55, 0.52], [[0.5, 0.6], [0.55, 0.5]])
    row = _row([0.54, 0.50], [[0.45, 0.65], [0.5, 0.5]])
    lower = recipe_report.summarise(row, baseline, greater_is_better=False)
    assert lower["diff_mean"] == pytest.approx(np.mean([-0.05, 0.05, -0.05, 0.0]))
    assert (lower["folds_better"], lower["folds_total"]) == (2, 4)  # a tie is not better
    assert lower["cv_mean"] == pytest.approx(0.52) and lower["cv_std"] == pytest.approx(np.std([0.54, 0.5], ddof=1))
    assert recipe_report.summarise(row, baseline, greater_is_better=True)["folds_better"] == 1
    only_seed1 = _row([0.50], [[0.5, 0.5]], seeds=(1,))  # a row finished for seed 1 only pairs with seed 1
    assert recipe_report.summarise(only_seed1, baseline, False)["diff_mean"] == pytest.approx(-0.025)
    assert "diff_mean" not in recipe_report.summarise(baseline, baseline, False)


def test_leak_inflation_is_paired_by_seed():
    leak_free = _row([0.80, 0.82], [[0, 0]] * 2, holdout=[0.79, 0.80])
    leaky = _row([0.90, 0.86], [[0, 0]] * 2, holdout=[0.80, 0.80])
    out = recipe_report.leak_inflation(leaky, leak_free)
    assert out["cv_diff_mean"] == pytest.approx(0.07) and out["holdout_diff_mean"] == pytest.approx(0.005)
    assert out["n_seeds"] == 2


def test_render_names_every_row_and_the_unfinished_ones():
    info = {"metric": "f1", "greater_is_better": True, "constant_cv": 0.0, "n_train": 10, "n_folds": 2,
            "n_pool": 4, "n_holdout": 3, "overrides": [], "mlm": {}, "mlm_wall_s": None,
            "rows": [dict(_row([0.5, 0.6], [[0.5, 0.5]] * 2, holdout=[0.4, 0.5]), row="baseline"),
                     dict(_row([0.7, 0.8], [[0.7, 0.7]] * 2, holdout=[0.4, 0.5]), row="pseudo"),
                     dict(_row([], [], seeds=()), row="tapt"),
                     dict(_row([0.9, 0.9], [[0.9, 0.9]] * 2, holdout=[0.4, 0.5]), row="pseudo_leaky", leaky=True,
                          refusal="leak: nope")]}
    text = recipe_report.render([{"size": "smoke", "seeds": [0, 1], "datasets": {"tweets": info}}], "smoke")
    assert "| baseline |" in text and "| tapt |  | not finished |" in text and "| **pseudo_leaky** |" in text
    assert "`pseudo_leaky`: CV 0.1500 ± 0.0707; holdout 0.0000 ± 0.0000" in text
    assert "leak: nope" in text and "recipe/smoke_tweets.png" in text
