"""End to end through the real CLI (`main(argv)`): folds -> train -> OOF -> submission, for every task,
with a tiny config-built BERT. Also resume after a crash, the output-folder guard, and `predict`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TARGETS, write_competition, write_config
from dontstop.cli import main
from dontstop.folds import read_fold_file


def run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def run_experiment(tmp_path, tiny_bert, task="regression", name="exp", n_train=60, **sections):
    if not (tmp_path / "input" / task / "train.csv").exists():
        write_competition(tmp_path, task, n_train=n_train)
    cfg = write_config(tmp_path, name, task, tiny_bert, **sections)
    run("folds", cfg)
    run("train", cfg)
    return cfg, tmp_path / "oof" / name


@pytest.mark.parametrize("task", list(TARGETS))
def test_each_task_end_to_end(tmp_path, tiny_bert, task):
    cfg, out = run_experiment(tmp_path, tiny_bert, task)
    scores = json.loads((out / "scores.json").read_text())
    targets, metric = TARGETS[task]
    assert scores["metric"] == metric and len(scores["fold_scores"]) == 3
    assert np.isfinite(scores["cv"]) and np.isfinite(scores["baseline_cv"])
    fold_table, fold_hash = read_fold_file(tmp_path / "input" / "folds" / f"{task}.csv")
    assert scores["fold_file_hash"] == fold_hash
    for k in range(3):  # label provenance: the fold-k model never saw fold k's labels
        assert k not in scores["provenance"][f"fold{k}"]
        assert sorted(scores["provenance"][f"fold{k}"]) == sorted({0, 1, 2} - {k})

    train = pd.read_csv(tmp_path / "input" / task / "train.csv", dtype={"id": str})
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == train["id"].tolist()
    assert (oof.set_index("id")["fold"] == fold_table.set_index("id")["fold"].reindex(oof["id"])).all()
    pred_cols = [c for c in oof.columns if c.startswith("pred_")]
    assert set(targets) <= set(oof.columns) and not oof[pred_cols].isna().any().any()
    if task in ("binary", "multilabel", "multiclass"):
        assert ((oof[pred_cols] >= 0) & (oof[pred_cols] <= 1)).all().all()
    if task == "multiclass":
        assert np.allclose(oof[pred_cols].to_numpy().sum(1), 1.0, atol=1e-5)
        assert len(pred_cols) == train["topic"].nunique()

    test_folds = [pd.read_csv(out / f"test_fold{k}.csv", dtype={"id": str}) for k in range(3)]
    test = pd.read_csv(out / "test.csv", dtype={"id": str})
    assert np.allclose(test[pred_cols], sum(f[pred_cols] for f in test_folds) / 3, atol=1e-6)
    sample = pd.read_csv(tmp_path / "input" / task / "sample_submission.csv", dtype={"id": str})
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert sub.columns.tolist() == sample.columns.tolist() and sub["id"].tolist() == sample["id"].tolist()
    if task == "multiclass":
        assert set(sub["topic"]) <= set(train["topic"])
    if task == "multilabel":  # macro_f1 scores labels, so the submission holds 0/1
        assert set(np.unique(sub[targets])) <= {0, 1}
    assert (tmp_path / "models" / "exp" / "fold0" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file() and (out / "train.log").is_file()


def test_learns_more_than_a_constant(tmp_path, tiny_bert):
    _, out = run_experiment(tmp_path, tiny_bert, "multiclass", n_train=150,
                            train={"epochs": 10, "lr": 2e-3, "head_lr": 2e-3})
    scores = json.loads((out / "scores.json").read_text())
    assert scores["cv"] < 0.8 * scores["baseline_cv"]  # logloss: clearly better than the class prior


def test_same_seed_gives_identical_oof(tmp_path, tiny_bert):
    _, out_a = run_experiment(tmp_path, tiny_bert, name="a")
    _, out_b = run_experiment(tmp_path, tiny_bert, name="b")
    a, b = pd.read_csv(out_a / "oof.csv"), pd.read_csv(out_b / "oof.csv")
    pd.testing.assert_frame_equal(a, b)


def test_resume_after_a_crash_mid_fold(tmp_path, tiny_bert, monkeypatch):
    import dontstop.train as T

    write_competition(tmp_path, "regression")
    cfg = write_config(tmp_path, "exp", "regression", tiny_bert)
    run("folds", cfg)
    real_write_json = T.write_json

    def crash_on_fold1(path, obj):
        if path.name == "fold1.json":
            raise KeyboardInterrupt("killed while finishing fold 1")
        real_write_json(path, obj)

    monkeypatch.setattr(T, "write_json", crash_on_fold1)
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(cfg)])
    out = tmp_path / "oof" / "exp"
    assert (out / "fold0.json").is_file() and not (out / "fold1.json").exists()
    assert (out / "oof_fold1.csv").is_file()  # a partial fold leaves files, but no record: not finished
    assert not (out / "scores.json").exists()
    assert not list(out.glob(".*.tmp"))  # no half-written temporary files
    fold0_record = (out / "fold0.json").read_text()

    monkeypatch.setattr(T, "write_json", real_write_json)
    run("train", cfg)
    assert (out / "fold0.json").read_text() == fold0_record  # fold 0 was skipped, not retrained
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["fold_scores"]) == 3

    run("train", cfg, "--fold", "1", "--force")  # --force retrains just that fold
    assert (out / "fold0.json").read_text() == fold0_record
    assert (out / "scores.json").is_file()


def test_partial_folds_then_assemble(tmp_path, tiny_bert):
    write_competition(tmp_path, "regression")
    cfg = write_config(tmp_path, "exp", "regression", tiny_bert)
    run("folds", cfg)
    run("train", cfg, "--fold", "0", "--fold", "2")  # e.g. two GPUs, one fold each
    out = tmp_path / "oof" / "exp"
    assert not (out / "scores.json").exists()
    run("train", cfg, "--fold", "1")
    assert (out / "scores.json").is_file()


def test_refuses_results_of_another_config_unless_forced(tmp_path, tiny_bert, capsys):
    cfg, out = run_experiment(tmp_path, tiny_bert)
    assert main(["train", str(cfg), "train.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "holds results of a different config" in err and "train.lr" in err and "--force" in err
    run("train", cfg, "train.eval_batch_size=4")  # a key that changes no result is fine
    run("train", cfg, "train.lr=0.01", "--force")
    assert "lr: 0.01" in (out / "config.yaml").read_text()


def test_predict_stage_reproduces_train_test_predictions(tmp_path, tiny_bert):
    cfg, out = run_experiment(tmp_path, tiny_bert, "multiclass")
    before = pd.read_csv(out / "test.csv")
    submission = (out / "submission.csv").read_text()
    for path in out.glob("test*.csv"):
        path.unlink()
    run("predict", cfg)
    after = pd.read_csv(out / "test.csv")
    pd.testing.assert_frame_equal(before, after, atol=1e-5)
    assert (out / "submission.csv").read_text() == submission


def test_training_options_run_end_to_end(tmp_path, tiny_bert):
    cfg, out = run_experiment(
        tmp_path, tiny_bert, "regression",
        competition={"text_columns": ["title", "text"], "text_pair": True},
        model={"pooling": "attention", "multi_sample_dropout": 3, "reinit_layers": 1,
               "gradient_checkpointing": True, "backbone_dropout": None},
        train={"epochs": 3, "optimizer": "adamw_8bit", "grad_accum": 2, "scheduler": "linear",
               "layerwise_lr_decay": 0.8, "ema_decay": 0.9, "eval_every": 2, "loss": "smooth_l1"})
    record = json.loads((out / "fold0.json").read_text())
    steps = [h["step"] for h in record["history"]]
    assert steps[:3] == [2, 4, 6] and steps[-1] == record["total_steps"]
    assert record["total_steps"] == 3 * 3  # 40 rows / batch 8 = 5 batches -> 3 optimizer steps per epoch
    assert json.loads((out / "scores.json").read_text())["cv"] > 0


def test_swa_and_early_stopping(tmp_path, tiny_bert):
    _, out = run_experiment(tmp_path, tiny_bert, "binary", name="swa",
                            model={"pooling": "weighted_layers", "pooling_layers": 2},
                            train={"swa_last": 2, "eval_every": 1, "epochs": 2})
    record = json.loads((out / "fold0.json").read_text())
    assert record["history"][-1]["swa_of_last"] == 2 and record["best_step"] == record["total_steps"]
    _, out = run_experiment(tmp_path, tiny_bert, "binary", name="early",
                            train={"eval_every": 1, "epochs": 20, "early_stopping_patience": 2, "lr": 0.0,
                                   "head_lr": 0.0, "warmup_ratio": 0.0})
    record = json.loads((out / "fold0.json").read_text())
    assert len(record["history"]) == 3  # lr 0: no improvement after the first evaluation, stop after 2 more
    assert record["history"][-1]["step"] < record["total_steps"]


def test_cli_reports_bad_input_without_traceback(tmp_path, tiny_bert, capsys):
    write_competition(tmp_path, "regression")
    cfg = write_config(tmp_path, "exp", "regression", tiny_bert)
    assert main(["train", str(cfg)]) == 2  # no fold file yet
    assert "run `python -m dontstop folds" in capsys.readouterr().err
    assert main(["folds", str(cfg), "competition.text_columns=[body]"]) == 2
    assert "column(s) ['body'] named by competition.text_columns are missing" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run("folds", cfg)
    assert main(["train", str(cfg), f"oof_dir={blocker}/oof"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_two_process_data_parallel_on_cpu(tmp_path, tiny_bert):
    """`torchrun --nproc_per_node 2` (gloo on CPU) runs the same code as data-parallel training."""
    import os
    import subprocess
    import sys

    write_competition(tmp_path, "binary")
    cfg = write_config(tmp_path, "ddp", "binary", tiny_bert)
    run("folds", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dontstop", "train", str(cfg)],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "oof" / "ddp" / "train.log").read_text()
    assert "processes 2" in log
    scores = json.loads((tmp_path / "oof" / "ddp" / "scores.json").read_text())
    oof = pd.read_csv(tmp_path / "oof" / "ddp" / "oof.csv")
    assert len(oof) == 60 and not oof["pred_label"].isna().any()
    assert all(k not in scores["provenance"][f"fold{k}"] for k in range(3))
    record = json.loads((tmp_path / "oof" / "ddp" / "fold0.json").read_text())
    assert record["total_steps"] == 2 * 3  # 40 rows, batch 8 per process x 2 processes -> 3 steps an epoch


def test_train_folds_script_runs_the_stages_with_folds_in_parallel(tmp_path, tiny_bert):
    """scripts/train_folds.sh: folds then train; DONTSTOP_FOLD_GPUS spreads folds over processes."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_folds.sh"
    write_competition(tmp_path, "regression")
    cfg = write_config(tmp_path, "script", "regression", tiny_bert, stages=["folds", "train", "predict"])
    env = {**os.environ, "DONTSTOP_FOLD_GPUS": "0,1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(script), str(cfg), "train.epochs=1"], capture_output=True, text=True,
                            env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "oof" / "script"
    assert [f"== dontstop {s}" in result.stdout for s in ("folds", "train", "predict")] == [True] * 3
    assert json.loads((out / "scores.json").read_text())["config"]["train"]["epochs"] == 1
    assert (out / "submission.csv").is_file()
    bad = subprocess.run(["bash", str(script), str(cfg), "train.nope=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown key 'train.nope'" in bad.stderr


def test_class_missing_from_training_folds_is_refused(tmp_path, tiny_bert, capsys):
    from dontstop.folds import write_fold_file

    root = write_competition(tmp_path, "multiclass")
    train = pd.read_csv(root / "train.csv", dtype={"id": str})
    rare = train["topic"].value_counts().index[-1]
    folds = np.where(train["topic"] == rare, 0, np.arange(len(train)) % 3)  # the rare class only in fold 0
    cfg = write_config(tmp_path, "exp", "multiclass", tiny_bert)
    write_fold_file(tmp_path / "input" / "folds" / "multiclass.csv", train["id"], folds, {"strategy": "custom"})
    assert main(["train", str(cfg), "--fold", "0"]) == 2
    assert f"class(es) ['{rare}'] never appear in the training folds" in capsys.readouterr().err


def test_trackers_are_opt_in_and_checked(tmp_path, tiny_bert, capsys):
    from accelerate.utils import is_tensorboard_available

    write_competition(tmp_path, "regression")
    cfg = write_config(tmp_path, "exp", "regression", tiny_bert)
    run("folds", cfg)
    assert main(["train", str(cfg), "train.log_with=[nosuchtracker]"]) == 2
    assert "unknown tracker 'nosuchtracker'" in capsys.readouterr().err
    if not is_tensorboard_available():
        assert main(["train", str(cfg), "train.log_with=[tensorboard]"]) == 2
        assert "'tensorboard' but it is not installed" in capsys.readouterr().err
    else:
        run("train", cfg, "train.log_with=[tensorboard]", "train.epochs=1")
        assert list((tmp_path / "oof" / "exp" / "trackers").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("model_type", ["roberta", "deberta-v2", "electra"])
def test_other_encoder_families_train(tmp_path, model_type):
    """RoBERTa, DeBERTa-v3-style (no SDPA: falls back) and ELECTRA shapes, built from their configs."""
    from conftest import build_tiny_encoder, demo_texts
    from dontstop.config import ModelConfig
    from dontstop.models import build_model, parameter_groups

    backbone = build_tiny_encoder(tmp_path / model_type, demo_texts(), model_type=model_type)
    model = build_model(ModelConfig(backbone=str(backbone)), n_outputs=1)
    lrs = {g["lr"] for g in parameter_groups(model, 1e-4, 1e-3, 0.5, 0.01)}
    assert {1e-3, 1e-4, 0.5e-4, 0.25e-4} <= {round(lr, 12) for lr in lrs}  # head, 2 layers, embeddings
    _, out = run_experiment(tmp_path, backbone, "regression", model={"reinit_layers": 1, "pooling": "attention"},
                            train={"epochs": 1, "layerwise_lr_decay": 0.5})
    scores = json.loads((out / "scores.json").read_text())
    assert np.isfinite(scores["cv"]) and len(scores["fold_scores"]) == 3


def test_new_fold_file_retrains_folds_made_on_the_old_one(tmp_path, tiny_bert):
    cfg, out = run_experiment(tmp_path, tiny_bert)
    old_hash = json.loads((out / "scores.json").read_text())["fold_file_hash"]
    run("folds", cfg, "folds.seed=1", "folds.file=" + str(tmp_path / "input" / "folds" / "regression.csv"), "--force")
    run("train", cfg)  # same experiment config, but the split changed: every fold is retrained
    scores = json.loads((out / "scores.json").read_text())
    assert scores["fold_file_hash"] != old_hash
    assert all(json.loads((out / f"fold{k}.json").read_text())["fold_file_hash"] == scores["fold_file_hash"]
               for k in range(3))


def test_a_config_saved_before_new_keys_existed_still_matches(tmp_path, tiny_bert):
    import yaml

    cfg, out = run_experiment(tmp_path, tiny_bert)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["distill"], saved["pseudo"]["weight"]  # as written by an older dontstop
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    run("train", cfg)  # defaults for the missing keys: the same experiment, nothing to refuse
    assert main(["train", str(cfg), "distill.alpha=0.9"]) == 2  # but a non-default value is a change
