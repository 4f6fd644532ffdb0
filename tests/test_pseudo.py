"""Leak-free pseudo-labelling: teacher fold k labels the pool for student fold k, provenance is checked,
and on permuted labels the whole chain stays at chance (the leak canary)."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_competition, write_config
from dontstop.cli import main
from dontstop.config import PseudoConfig
from dontstop.pseudo import pseudo_targets, select_rows


def teacher_and_student(tmp_path, tiny_bert, task="binary", n_train=60, **pseudo):
    root = write_competition(tmp_path, task, n_train=n_train)
    teacher = write_config(tmp_path, "teacher", task, tiny_bert)
    student = write_config(tmp_path, "student", task, tiny_bert, stages=["folds", "pseudo", "train"],
                           pseudo={"teacher": "teacher", "pool": str(root / "unlabelled.csv"), "label_test": True,
                                   "weight": 0.5, **pseudo})
    for stage in ("folds", "train"):
        assert main([stage, str(teacher)]) == 0
    return root, teacher, student


def test_teacher_fold_k_labels_the_pool_for_student_fold_k(tmp_path, tiny_bert):
    root, _, student = teacher_and_student(tmp_path, tiny_bert)
    for stage in ("pseudo", "train"):
        assert main([stage, str(student)]) == 0
    out = tmp_path / "oof" / "student"
    pool_ids = set(pd.read_csv(root / "unlabelled.csv", dtype={"id": str})["id"]) | \
        set(pd.read_csv(root / "test.csv", dtype={"id": str})["id"])
    for k in range(3):
        meta = json.loads((out / f"pseudo_fold{k}.json").read_text())
        assert meta["teacher_fold"] == k and k not in meta["label_folds"]
        rows = pd.read_csv(out / f"pseudo_fold{k}.csv", dtype={"id": str, "label_folds": str})
        assert set(rows["id"]) <= pool_ids and (rows["weight"] == 0.5).all()
        assert ((rows["pseudo_label"] >= 0) & (rows["pseudo_label"] <= 1)).all()
        record = json.loads((out / f"fold{k}.json").read_text())
        assert k not in record["trained_on_folds"]
    scores = json.loads((out / "scores.json").read_text())
    assert all(k not in scores["provenance"][f"fold{k}"] for k in range(3))


def test_pseudo_labels_that_saw_fold_k_are_refused(tmp_path, tiny_bert, capsys):
    _, _, student = teacher_and_student(tmp_path, tiny_bert)
    assert main(["pseudo", str(student)]) == 0
    meta = tmp_path / "oof" / "student" / "pseudo_fold1.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "label_folds": [0, 1, 2]}))  # an all-fold average
    assert main(["train", str(student), "--fold", "1"]) == 2
    assert "leak:" in capsys.readouterr().err
    assert main(["pseudo", str(student)]) == 0
    rows_file = tmp_path / "oof" / "student" / "pseudo_fold2.csv"
    rows = pd.read_csv(rows_file, dtype=str)
    rows.loc[0, "label_folds"] = "0,1,2"  # one hand-edited row is enough
    rows.to_csv(rows_file, index=False)
    assert main(["train", str(student), "--fold", "2"]) == 2
    assert "rows with label_folds=0,1,2" in capsys.readouterr().err


def test_pool_rows_already_in_train_are_dropped(tmp_path, tiny_bert, capsys):
    root, _, student = teacher_and_student(tmp_path, tiny_bert, label_test=False)
    pool = pd.read_csv(root / "unlabelled.csv")
    train = pd.read_csv(root / "train.csv")
    pd.concat([pool, train[["id", "text", "title"]].head(5).assign(id=lambda d: "copy" + d["id"])]).to_csv(
        root / "unlabelled.csv", index=False)
    assert main(["pseudo", str(student)]) == 0
    captured = capsys.readouterr()
    assert "dropped 5 pool rows whose text is in train" in captured.out + captured.err
    rows = pd.read_csv(tmp_path / "oof" / "student" / "pseudo_fold0.csv", dtype={"id": str})
    assert not rows["id"].str.startswith("copy").any() and len(rows) == len(pool)


def test_selection_threshold_balance_fraction_and_hard_labels():
    probs = np.array([[0.95], [0.6], [0.02], [0.97], [0.99], [0.4]])
    keep = select_rows(probs, "binary", PseudoConfig(threshold=0.9), np.random.default_rng(0))
    assert keep.tolist() == [0, 2, 3, 4]
    balanced = select_rows(probs, "binary", PseudoConfig(threshold=0.9, balance=True), np.random.default_rng(0))
    assert len(balanced) == 2 and set((probs[balanced, 0] > 0.5).tolist()) == {True, False}
    half = select_rows(probs, "binary", PseudoConfig(fraction=0.5), np.random.default_rng(0))
    assert len(half) == 3
    multi = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    assert select_rows(multi, "multiclass", PseudoConfig(threshold=0.6), np.random.default_rng(0)).tolist() == [0]
    assert pseudo_targets(multi, "multiclass", soft=False).tolist() == [[1, 0, 0], [1, 0, 0]]
    assert pseudo_targets(probs, "binary", soft=False)[:, 0].tolist() == [1, 1, 0, 1, 1, 0]
    assert np.array_equal(pseudo_targets(probs, "binary", soft=True), probs)


def test_leak_canary_permuted_labels_stay_at_chance(tmp_path, tiny_bert):
    """Labels shuffled: nothing is learnable, so teacher -> pseudo-labels -> student must score ~0.5 AUC.
    The pool holds the train texts themselves (the classic route for a leak): they must be dropped."""
    root = write_competition(tmp_path, "binary", n_train=150)
    train = pd.read_csv(root / "train.csv")
    train["label"] = np.random.default_rng(7).permutation(train["label"].to_numpy())
    train.to_csv(root / "train.csv", index=False)
    pool = pd.concat([pd.read_csv(root / "unlabelled.csv"), train[["id", "text", "title"]].assign(id=lambda d: "p" + d["id"])])
    pool.to_csv(root / "pool.csv", index=False)
    teacher = write_config(tmp_path, "teacher", "binary", tiny_bert, train={"epochs": 4, "lr": 3e-3, "head_lr": 3e-3})
    student = write_config(tmp_path, "student", "binary", tiny_bert, stages=["folds", "pseudo", "train"],
                           train={"epochs": 4, "lr": 3e-3, "head_lr": 3e-3},
                           pseudo={"teacher": "teacher", "pool": str(root / "pool.csv"), "soft": False})
    for argv in (["folds", teacher], ["train", teacher], ["pseudo", student], ["train", student]):
        assert main([argv[0], str(argv[1])]) == 0
    for exp in ("teacher", "student"):
        cv = json.loads((tmp_path / "oof" / exp / "scores.json").read_text())["cv"]
        assert abs(cv - 0.5) < 0.12, f"{exp} CV {cv:.3f} on permuted labels: something leaks"
    rows = pd.read_csv(tmp_path / "oof" / "student" / "pseudo_fold0.csv", dtype={"id": str})
    assert not rows["id"].str.startswith("p").any()


def test_two_phase_schedule_and_a_second_round(tmp_path, tiny_bert, capsys):
    root, _, student = teacher_and_student(tmp_path, tiny_bert, schedule="two_phase", phase1_epochs=2)
    for stage in ("pseudo", "train"):
        assert main([stage, str(student)]) == 0
    err = capsys.readouterr().err
    assert "phase 1 done" in err and "(two_phase, weight 0.5)" in err
    # round 2: the round-1 student teaches, fold by fold; its provenance still excludes each fold
    round2 = write_config(tmp_path, "round2", "binary", tiny_bert, stages=["folds", "pseudo", "train"],
                          pseudo={"teacher": "student", "pool": str(root / "unlabelled.csv")})
    for stage in ("pseudo", "train"):
        assert main([stage, str(round2)]) == 0
    scores = json.loads((tmp_path / "oof" / "round2" / "scores.json").read_text())
    assert all(k not in scores["provenance"][f"fold{k}"] for k in range(3))


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_distillation_mixes_hard_and_teacher_fold_k_soft_labels(tmp_path, tiny_bert, task, capsys):
    write_competition(tmp_path, task)
    teacher = write_config(tmp_path, "teacher", task, tiny_bert)
    student = write_config(tmp_path, "student", task, tiny_bert, stages=["folds", "distill", "train"],
                           distill={"teacher": "teacher", "alpha": 0.3, "temperature": 2.0},
                           model={"pooling": "cls"})  # a different student head is fine
    for argv in (["folds", teacher], ["train", teacher], ["distill", student], ["train", student]):
        assert main([argv[0], str(argv[1])]) == 0
    out = tmp_path / "oof" / "student"
    train = pd.read_csv(tmp_path / "input" / task / "train.csv", dtype={"id": str})
    folds = pd.read_csv(tmp_path / "input" / "folds" / f"{task}.csv", dtype={"id": str}).set_index("id")["fold"]
    for k in range(3):
        soft = pd.read_csv(out / f"soft_fold{k}.csv", dtype={"id": str})
        assert set(soft["id"]) == set(train["id"][folds.reindex(train["id"]).to_numpy() != k])  # training rows only
        assert k not in json.loads((out / f"soft_fold{k}.json").read_text())["label_folds"]
        if task == "multiclass":
            values = soft[[c for c in soft.columns if c.startswith("soft_")]].to_numpy()
            assert np.allclose(values.sum(1), 1, atol=1e-5) and values.max() < 0.999  # tempered probabilities
    assert "targets = 0.3 * hard + 0.7 * soft labels of teacher/fold0" in capsys.readouterr().err
    meta = out / "soft_fold0.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "label_folds": [0, 1, 2]}))
    assert main(["train", str(student), "--fold", "0", "--force"]) == 2
    assert "leak:" in capsys.readouterr().err


def test_train_folds_script_trains_a_missing_teacher_first(tmp_path, tiny_bert):
    import subprocess
    from pathlib import Path

    root = write_competition(tmp_path, "regression")
    write_config(tmp_path, "teacher", "regression", tiny_bert, train={"epochs": 1})
    student = write_config(tmp_path, "student", "regression", tiny_bert, stages=["folds", "pseudo", "train"],
                           train={"epochs": 1}, pseudo={"teacher": "teacher", "pool": str(root / "unlabelled.csv")})
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_folds.sh"
    result = subprocess.run(["bash", str(script), str(student)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher teacher is not finished" in result.stdout
    assert (tmp_path / "oof" / "teacher" / "scores.json").is_file()
    assert (tmp_path / "oof" / "student" / "scores.json").is_file()


def test_regression_agreement_filter_keeps_rows_the_teachers_agree_on(tmp_path, tiny_bert):
    root = write_competition(tmp_path, "regression")
    for name, seed in (("t1", 1), ("t2", 2)):
        cfg = write_config(tmp_path, name, "regression", tiny_bert, train={"seed": seed})
        assert main(["folds", str(cfg)]) == 0 and main(["train", str(cfg)]) == 0
    kept = {}
    for max_std in (0.0, 1e-6, 100.0):  # off; stricter than two seeds ever agree; looser than any spread
        student = write_config(tmp_path, f"s{max_std}", "regression", tiny_bert, stages=["folds", "pseudo", "train"],
                               pseudo={"teacher": "t1", "agree_with": ["t2"], "max_std": max_std,
                                       "pool": str(root / "unlabelled.csv"), "label_test": True})
        assert main(["pseudo", str(student)]) == 0
        kept[max_std] = json.loads((tmp_path / "oof" / f"s{max_std}" / "pseudo_fold0.json").read_text())["n_selected"]
    assert kept[0.0] == kept[100.0] == 20 and kept[1e-6] == 0  # 8 pool + 12 test rows
