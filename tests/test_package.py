"""`dontstop package` + `dontstop infer`: a bundle made from trained tiny experiments predicts, in a fresh
process with every socket refused and from another working directory, what the pipeline itself predicted."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_competition, write_config
from dontstop import bundle as B
from dontstop.cli import main

# Runs `python -m dontstop ...` with every network connection refused and recorded.
OFFLINE_RUNNER = """
import socket, sys, runpy
attempts = sys.argv.pop(1)
def refuse(*args, **kwargs):
    with open(attempts, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network access attempted in an offline run")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
if sys.argv[1] == "--probe":
    import urllib.request
    try:
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=2)
    except Exception:
        pass
    sys.exit(0)
sys.argv = ["dontstop"] + sys.argv[1:]
try:
    runpy.run_module("dontstop", run_name="__main__", alter_sys=True)
finally:  # a Kaggle image has neither: infer must not need them
    for name in ("iterstrat", "bitsandbytes"):
        if name in sys.modules:
            with open(attempts, "a") as f:
                f.write(f"imported {name}\\n")
"""


def run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """Two regression experiments, their ensemble, and a multiclass experiment, trained once."""
    root = tmp_path_factory.mktemp("package")
    for task in ("regression", "multiclass"):
        write_competition(root, task, n_train=48, n_test=10)
    a = write_config(root, "a", "regression", tiny_bert, train={"epochs": 1})
    b = write_config(root, "b", "regression", tiny_bert, train={"epochs": 1, "lr": 3e-4}, model={"pooling": "cls"})
    mc = write_config(root, "mc", "multiclass", tiny_bert, train={"epochs": 1})
    ens = write_config(root, "ens", "regression", tiny_bert, stages=["ensemble"],
                       ensemble={"members": ["a", "b"], "method": "optimize"})
    for cfg in (a, mc):
        run("folds", cfg)
    for cfg in (a, b, mc):
        run("train", cfg)
    run("ensemble", ens)
    wheel = B.build_wheel(root / "wheel")
    return {"root": root, "a": a, "b": b, "mc": mc, "ens": ens, "wheel": wheel}


@pytest.fixture
def prebuilt_wheel(trained, monkeypatch):
    """Tests that are not about the wheel reuse one built wheel (building takes seconds)."""
    def copy_wheel(out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(trained["wheel"], out_dir))
    monkeypatch.setattr(B, "build_wheel", copy_wheel)


def offline_infer(tmp_path: Path, bundle: Path, test: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    """`python -m dontstop infer` in a fresh process, in an empty working directory, sockets refused, with no
    Hugging Face cache and none of the offline switches set by the caller."""
    runner = tmp_path / "offline_runner.py"
    runner.write_text(OFFLINE_RUNNER)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "empty_hf_home")
    attempts = tmp_path / "network_attempts.txt"
    result = subprocess.run([sys.executable, str(runner), str(attempts), "infer", "--bundle", str(bundle),
                             "--test", str(test), "--out", str(out), *map(str, extra)],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert not attempts.exists(), f"infer reached for the network or a training-only package: {attempts.read_text()}"
    return result


def test_offline_runner_really_refuses_sockets(tmp_path):
    runner = tmp_path / "offline_runner.py"
    runner.write_text(OFFLINE_RUNNER)
    attempts = tmp_path / "attempts.txt"
    subprocess.run([sys.executable, str(runner), str(attempts), "--probe"], check=True, timeout=60)
    assert attempts.is_file() and "127.0.0.1" in attempts.read_text()


@pytest.mark.parametrize("experiment", ["a", "ens"])
def test_fresh_offline_process_reproduces_the_pipeline_submission(trained, tmp_path, experiment):
    root = trained["root"]
    bundle = tmp_path / "bundle"
    run("package", trained[experiment], "--out", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [m["name"] for m in manifest["members"]] == (["a", "b"] if experiment == "ens" else ["a"])
    assert (manifest["blend"] is not None) == (experiment == "ens")

    out = tmp_path / "sub.csv"
    result = offline_infer(tmp_path, bundle, root / "input" / "regression" / "test.csv", out)
    assert result.returncode == 0, result.stderr
    ours = pd.read_csv(out)
    expected = pd.read_csv(root / "oof" / experiment / "submission.csv")
    sample = pd.read_csv(root / "input" / "regression" / "sample_submission.csv")
    assert list(ours.columns) == list(sample.columns)
    assert ours["id"].tolist() == sample["id"].tolist()
    np.testing.assert_allclose(ours["score"], expected["score"], atol=1e-5)
    # and the pipeline's own fold-averaged (and blended) test predictions
    test_preds = pd.read_csv(root / "oof" / experiment / "test.csv").set_index("id").reindex(ours["id"])
    np.testing.assert_allclose(ours["score"], test_preds["pred_score"], atol=1e-5)


def test_multiclass_labels_follow_a_given_sample_submission(trained, tmp_path, prebuilt_wheel):
    root = trained["root"]
    bundle = tmp_path / "bundle"
    run("package", trained["mc"], "--out", bundle)
    data = root / "input" / "multiclass"
    sample = pd.read_csv(data / "sample_submission.csv").sample(frac=1.0, random_state=0)  # another order
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "sub.csv"
    run("infer", "--bundle", bundle, "--test", data / "test.csv", "--out", out, "--sample", tmp_path / "sample.csv")
    ours = pd.read_csv(out)
    expected = pd.read_csv(root / "oof" / "mc" / "submission.csv").set_index("id").reindex(sample["id"]).reset_index()
    assert list(ours.columns) == list(sample.columns)
    pd.testing.assert_frame_equal(ours, expected)


def test_fp16_bundle_is_half_the_size_and_predicts_the_same(trained, tmp_path, prebuilt_wheel):
    root = trained["root"]
    run("package", trained["a"], "--out", tmp_path / "fp32")
    run("package", trained["a"], "--out", tmp_path / "fp16", "--fp16")
    size = {kind: sum(p.stat().st_size for p in (tmp_path / kind).rglob("model.safetensors")) for kind in ("fp32", "fp16")}
    assert 0.45 < size["fp16"] / size["fp32"] < 0.55
    assert json.loads((tmp_path / "fp16" / "bundle.json").read_text())["weights_dtype"] == "float16"
    run("infer", "--bundle", tmp_path / "fp16", "--test", root / "input" / "regression" / "test.csv",
        "--out", tmp_path / "sub.csv")
    ours = pd.read_csv(tmp_path / "sub.csv")
    expected = pd.read_csv(root / "oof" / "a" / "submission.csv")
    np.testing.assert_allclose(ours["score"], expected["score"], atol=2e-2)


def test_missing_fold_or_corrupt_weights_fail_with_a_clear_error(trained, tmp_path, prebuilt_wheel, capsys):
    root = trained["root"]
    test = root / "input" / "regression" / "test.csv"
    bundle = tmp_path / "bundle"
    run("package", trained["ens"], "--out", bundle)

    broken = tmp_path / "missing_fold"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "members" / "b" / "fold1")
    assert main(["infer", "--bundle", str(broken), "--test", str(test), "--out", str(tmp_path / "x.csv")]) == 2
    assert "member 'b': fold 1 is missing" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    weights = corrupt / "members" / "a" / "fold2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor: same size, loads without complaint
    weights.write_bytes(bytes(data))
    assert main(["infer", "--bundle", str(corrupt), "--test", str(test), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "member 'a' fold 2" in err and "corrupt" in err
    assert not (tmp_path / "x.csv").exists()

    assert main(["infer", "--bundle", str(tmp_path), "--test", str(test), "--out", str(tmp_path / "x.csv")]) == 2
    assert "is not a dontstop bundle" in capsys.readouterr().err


def test_bundle_layout_names_metadata_and_wheel(trained, tmp_path):
    bundle = tmp_path / "bundle"
    run("package", trained["ens"], "--out", bundle, "--id", "someone/My Fold Models", "--title", "dontstop ensemble")
    for path in bundle.rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9._/-]+", str(path.relative_to(bundle))), path
    metadata = json.loads((bundle / "dataset-metadata.json").read_text())
    assert metadata == {"title": "dontstop ensemble", "id": "someone/my-fold-models", "licenses": [{"name": "other"}]}
    manifest = json.loads((bundle / "bundle.json").read_text())
    wheel = bundle / manifest["wheel"]
    names = zipfile.ZipFile(wheel).namelist()
    assert "dontstop/infer.py" in names and "dontstop/bundle.py" in names
    assert "pip install --no-index --no-deps /kaggle/input/my-fold-models/wheels/" in (bundle / "README.md").read_text()
    # packaging again into the same folder replaces the old bundle; a foreign folder is refused
    run("package", trained["a"], "--out", bundle)
    assert not (bundle / "members" / "b").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(["package", str(trained["a"]), "--out", str(tmp_path / "foreign")]) == 2


def test_package_refuses_unfinished_experiments(trained, tmp_path, prebuilt_wheel, capsys):
    root = trained["root"]
    cfg = write_config(root, "never_trained", "regression", root / "nowhere")
    assert main(["package", str(cfg), "--out", str(tmp_path / "b1")]) == 2
    assert "'never_trained' is not finished" in capsys.readouterr().err
    ens = write_config(root, "ens_unblended", "regression", root / "nowhere", stages=["ensemble"],
                       ensemble={"members": ["a"]})
    assert main(["package", str(ens), "--out", str(tmp_path / "b2")]) == 2
    assert "run `python -m dontstop ensemble`" in capsys.readouterr().err


def test_upload_uses_the_kaggle_cli_only_when_it_and_credentials_exist(trained, tmp_path, prebuilt_wheel,
                                                                     monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no_kaggle_config"))
    run("package", trained["a"], "--out", tmp_path / "b1", "--upload")
    assert "not uploaded: the kaggle CLI" in capsys.readouterr().out

    calls = tmp_path / "kaggle_calls.txt"
    fake = bin_dir / "kaggle"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n[ \"$2\" = status ] && exit 1\nexit 0\n")
    fake.chmod(0o755)
    run("package", trained["a"], "--out", tmp_path / "b2", "--upload")
    assert "Kaggle credentials" in capsys.readouterr().out and not calls.exists()

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    run("package", trained["a"], "--out", tmp_path / "b3", "--upload")
    lines = calls.read_text().splitlines()
    assert lines == ["datasets status someone/dontstop-a", f"datasets create -p {tmp_path / 'b3'} --dir-mode zip"]
