"""`dontstop ensemble`: nested (honest) blending of finished experiments, through the real CLI, on
synthetic member OOF files over a real demo competition and fold file."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_competition
from dontstop.cli import main
from dontstop.folds import read_fold_file


def setup(tmp_path, members=None):
    """A regression demo competition, its fold file, and member experiments with known quality."""
    root = write_competition(tmp_path, "regression", n_train=120, n_test=20)
    cfg = tmp_path / "configs" / "blend.yaml"
    cfg.parent.mkdir(exist_ok=True)
    fold_file = tmp_path / "input" / "folds" / "regression.csv"
    base = {"competition": {"name": "reg", "train": str(root / "train.csv"), "test": str(root / "test.csv"),
                            "sample_submission": str(root / "sample_submission.csv"), "target_columns": ["score"],
                            "task": "regression", "metric": "rmse"},
            "folds": {"n_folds": 4, "file": str(fold_file)}, "oof_dir": str(tmp_path / "oof"),
            "models_dir": str(tmp_path / "models"), "stages": ["ensemble"],
            "ensemble": {"members": ["good", "weak", "noise_*"], "method": "hill_climb"}}
    import yaml
    cfg.write_text(yaml.safe_dump(base))
    assert main(["folds", str(cfg)]) == 0
    _, fold_hash = read_fold_file(fold_file)
    train = pd.read_csv(root / "train.csv", dtype={"id": str})
    test = pd.read_csv(root / "test.csv", dtype={"id": str})
    rng = np.random.default_rng(0)
    y = train["score"].to_numpy()
    members = members or {"good": 0.2, "weak": 0.6, "noise_a": None, "noise_b": None}
    for name, noise in members.items():
        folder = tmp_path / "oof" / name
        folder.mkdir(parents=True)
        pred = rng.normal(3, 1, len(y)) if noise is None else y + rng.normal(0, noise, len(y))
        pd.DataFrame({"id": train["id"], "fold": 0, "score": y, "pred_score": pred}).to_csv(folder / "oof.csv", index=False)
        pd.DataFrame({"id": test["id"], "pred_score": rng.normal(3, 1, len(test))}).to_csv(folder / "test.csv", index=False)
        (folder / "scores.json").write_text(json.dumps({"metric": "rmse", "task": "regression", "cv": 0.0,
                                                        "fold_scores": [0.0] * 4,
                                                        "fold_file_hash": fold_hash, "greater_is_better": False}))
    return cfg, tmp_path / "oof" / "blend"


@pytest.mark.parametrize("method", ["hill_climb", "optimize", "stack"])
def test_blend_is_honest_and_prefers_the_good_member(tmp_path, method):
    cfg, out = setup(tmp_path)
    assert main(["ensemble", str(cfg), f"ensemble.method={method}"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    weights = json.loads((out / "weights.json").read_text())
    assert weights["members"] == ["good", "weak", "noise_a", "noise_b"]
    assert scores["cv_in_sample"] <= scores["cv"]  # rmse: nested CV shows the in-sample optimism, never less
    assert scores["cv"] < scores["member_cv"]["weak"] and scores["cv"] < scores["baseline_cv"]
    if method != "stack":
        w = np.asarray(weights["weights"])
        assert w[0] > w[1] and np.isclose(w.sum(), 1.0)
        assert w[2] + w[3] < (0.03 if method == "optimize" else 1e-12)  # pure noise gets (almost) nothing
    assert all(k not in scores["provenance"][f"fold{k}"] for k in range(4))
    sample = pd.read_csv(tmp_path / "input" / "regression" / "sample_submission.csv", dtype={"id": str})
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert sub["id"].tolist() == sample["id"].tolist() and sub.columns.tolist() == sample.columns.tolist()
    assert len(pd.read_csv(out / "oof.csv")) == 120


def test_compare_ranks_the_blend_like_any_experiment(tmp_path, capsys):
    cfg, _ = setup(tmp_path)
    assert main(["ensemble", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "oof"), "--only", "blend", "--only", "good"]) == 0
    assert "blend" in capsys.readouterr().out


def test_bad_members_are_named(tmp_path, capsys):
    cfg, _ = setup(tmp_path)
    (tmp_path / "oof" / "weak" / "test.csv").unlink()
    assert main(["ensemble", str(cfg)]) == 2
    assert "member 'weak' has no test predictions" in capsys.readouterr().err
    cfg, _ = setup(tmp_path / "nan")
    oof = tmp_path / "nan" / "oof" / "good" / "oof.csv"
    frame = pd.read_csv(oof)
    frame.loc[3, "pred_score"] = np.nan
    frame.to_csv(oof, index=False)
    assert main(["ensemble", str(cfg)]) == 2
    assert "member 'good': 1 OOF rows are NaN" in capsys.readouterr().err
    cfg, _ = setup(tmp_path / "hash")
    meta = tmp_path / "hash" / "oof" / "noise_a" / "scores.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fold_file_hash": "other"}))
    assert main(["ensemble", str(cfg)]) == 2
    assert "different fold files" in capsys.readouterr().err
    assert main(["ensemble", str(cfg), "ensemble.members=[missing]"]) == 2
    assert "'missing' matches no finished experiment" in capsys.readouterr().err
    assert main(["ensemble", str(cfg), "competition.metric=mae"]) == 2
    assert "scored with rmse" in capsys.readouterr().err
