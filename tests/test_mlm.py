"""The MLM stage: corpus building, sequence packing, held-out loss, resume, skip, and the chain into
fine-tuning, through the real CLI on a tiny config-built BERT."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import write_competition, write_config
from dontstop.cli import main
from dontstop.config import ConfigError, load_config
from dontstop.corpus import split_heldout, tokenize_documents

MLM = {"epochs": 4, "batch_size": 8, "max_length": 32, "eval_every": 5, "lr": 2e-3, "holdout_fraction": 0.1}


def mlm_config(tmp_path, tiny_bert, name="tapt", **mlm):
    write_competition(tmp_path, "regression", n_train=60)
    pool = str(tmp_path / "input" / "regression" / "unlabelled.csv")
    return write_config(tmp_path, name, "regression", tiny_bert, stages=["mlm", "folds", "train"],
                        mlm={**MLM, "backbone": str(tiny_bert), "extra": [{"path": pool}], **mlm},
                        model={"backbone": str(tmp_path / "models" / "mlm" / name)})


@pytest.fixture()
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def test_packed_and_line_by_line_keep_every_token(tokenizer):
    docs = ["the food was good " * 12, "short one", "the staff were rude and the room was awful " * 5]
    expected = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    for packing in ("packed", "line_by_line"):
        stream = tokenize_documents(docs, [1, 1, 1], tokenizer, max_length=16, packing=packing)
        lengths = stream.seq_bounds[:, 1] - stream.seq_bounds[:, 0]
        assert lengths.max() <= 14  # room for [CLS] and [SEP]
        kept = np.concatenate([stream.tokens[a:b] for a, b in stream.seq_bounds])
        content = kept[~np.concatenate([stream.special[a:b] for a, b in stream.seq_bounds])]
        assert content.tolist() == sum(expected, [])  # every token, in order, nothing dropped
        if packing == "packed":
            assert (lengths[:-1] == 14).all()  # full blocks; only the last may be short
        else:  # windows never mix two documents
            assert len(stream.seq_bounds) == sum(-(-len(e) // 14) for e in expected)
    packed = tokenize_documents(docs, [1, 1, 1], tokenizer, max_length=16, packing="packed")
    doubled = tokenize_documents(docs, [2, 1, 1], tokenizer, max_length=16, packing="packed")
    assert len(doubled.tokens) == len(packed.tokens) + len(expected[0]) + 1  # repeat=2 enters it twice


def test_heldout_split_is_by_document_and_seeded():
    held = split_heldout(100, 0.1, seed=3)
    assert held.sum() == 10 and (held == split_heldout(100, 0.1, seed=3)).all()
    assert not (held == split_heldout(100, 0.1, seed=4)).all()
    assert split_heldout(1, 0.5, seed=0).sum() == 0 and split_heldout(5, 0.0, seed=0).sum() == 0


def test_mlm_lowers_heldout_loss_and_feeds_fine_tuning(tmp_path, tiny_bert):
    from transformers import AutoModelForMaskedLM

    cfg = mlm_config(tmp_path, tiny_bert)
    for stage in ("mlm", "folds", "train"):
        assert main([stage, str(cfg)]) == 0
    out = tmp_path / "models" / "mlm" / "tapt"
    scores = json.loads((out / "mlm_scores.json").read_text())
    assert scores["head_initialised"] is True  # the tiny backbone is saved without an MLM head
    assert scores["perplexity_after"] < 0.8 * scores["perplexity_before"]
    assert 0 < scores["masked_token_accuracy"] <= 1 and scores["label_folds"] == []
    assert scores["n_documents"] == 60 + 12 + 8 and scores["n_heldout_documents"] == 8
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    fine_tuned = json.loads((tmp_path / "oof" / "tapt" / "scores.json").read_text())
    assert fine_tuned["config"]["model"]["backbone"] == str(out) and np.isfinite(fine_tuned["cv"])
    assert not (out / "checkpoint").exists()


def test_identical_run_is_skipped_and_a_changed_one_reruns(tmp_path, tiny_bert, capsys):
    cfg = mlm_config(tmp_path, tiny_bert, epochs=1)
    assert main(["mlm", str(cfg)]) == 0
    weights = tmp_path / "models" / "mlm" / "tapt" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["mlm", str(cfg)]) == 0
    assert "already holds this exact run" in capsys.readouterr().err and weights.stat().st_mtime_ns == stamp
    assert main(["mlm", str(cfg), "mlm.mlm_probability=0.2"]) == 0
    assert weights.stat().st_mtime_ns != stamp


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_bert, monkeypatch):
    import dontstop.mlm as M
    from safetensors.torch import load_file

    cfg = mlm_config(tmp_path, tiny_bert, epochs=2, eval_every=3)
    assert main(["mlm", str(cfg), "mlm.name=straight"]) == 0
    real_save = M._save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after the second checkpoint")

    monkeypatch.setattr(M, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(["mlm", str(cfg), "mlm.name=resumed"])
    resumed = tmp_path / "models" / "mlm" / "resumed"
    assert (resumed / "checkpoint" / "state.json").is_file() and not (resumed / "mlm_run.json").exists()
    assert json.loads((resumed / "checkpoint" / "state.json").read_text())["step"] == 6
    monkeypatch.setattr(M, "_save_checkpoint", real_save)
    assert main(["mlm", str(cfg), "mlm.name=resumed"]) == 0
    a = load_file(str(tmp_path / "models" / "mlm" / "straight" / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    sa = json.loads((tmp_path / "models" / "mlm" / "straight" / "mlm_scores.json").read_text())
    sb = json.loads((resumed / "mlm_scores.json").read_text())
    assert sa["perplexity_after"] == sb["perplexity_after"] and sa["history"] == sb["history"]


@pytest.mark.parametrize("masking, packing", [("span", "line_by_line"), ("token", "packed")])
def test_other_masking_and_packing_modes_run(tmp_path, tiny_bert, masking, packing):
    cfg = mlm_config(tmp_path, tiny_bert, epochs=1, masking=masking, packing=packing, head_warmup_steps=3,
                     optimizer="adamw_8bit", grad_accum=2)
    assert main(["mlm", str(cfg)]) == 0
    scores = json.loads((tmp_path / "models" / "mlm" / "tapt" / "mlm_scores.json").read_text())
    assert scores["config"]["masking"] == masking and np.isfinite(scores["perplexity_after"])


def test_bad_input_errors_name_the_setting(tmp_path, tiny_bert, capsys):
    cfg = mlm_config(tmp_path, tiny_bert)
    assert main(["mlm", str(cfg), "mlm.use_train_text=false", "mlm.use_test_text=false", "mlm.extra=[]"]) == 2
    assert "the corpus is empty" in capsys.readouterr().err
    pool = tmp_path / "input" / "regression" / "unlabelled.csv"
    assert main(["mlm", str(cfg), f"mlm.extra=[{{path: {pool}, column: body}}]"]) == 2
    assert "has no column 'body'" in capsys.readouterr().err
    assert main(["mlm", str(cfg), "mlm.max_length=512"]) == 2
    assert "mlm.max_length=512 exceeds the 130 positions" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'mlm.max_length' .* at least 8"):
        load_config(cfg, ["mlm.max_length=4"])
    from transformers import PreTrainedTokenizerFast

    no_mask = tmp_path / "no_mask"  # the same model, with a tokenizer that has no mask token
    shutil.copytree(tiny_bert, no_mask)
    for path in no_mask.glob("*token*"):
        path.unlink()
    PreTrainedTokenizerFast(tokenizer_file=str(tiny_bert / "tokenizer.json"), pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(no_mask)
    assert main(["mlm", str(cfg), f"mlm.backbone={no_mask}"]) == 2
    assert "has no mask token" in capsys.readouterr().err


def test_corpus_removes_duplicates_and_reads_no_labels(tmp_path, tiny_bert):
    import pandas as pd

    from dontstop.corpus import collect_documents

    cfg_path = mlm_config(tmp_path, tiny_bert)
    train = pd.read_csv(tmp_path / "input" / "regression" / "train.csv")
    dup = tmp_path / "dups.txt"
    dup.write_text(train["text"][0] + "\n" + "  A brand  new line \n" + "a brand new LINE\n")
    cfg = load_config(cfg_path, [f"mlm.extra=[{{path: {dup}, repeat: 3}}]", "competition.text_columns=[text]"])
    docs, repeats = collect_documents(cfg, log=lambda *_: None)
    assert len(docs) == 60 + 12 + 1  # the train text and the case / space variant are dropped
    assert repeats[-1] == 3 and docs.count(train["text"][0]) == 1
    cfg.competition.target_columns = ["no_such_column"]  # labels are never read
    assert len(collect_documents(cfg, log=lambda *_: None)[0]) == 73


def test_task_guided_masking_is_per_fold_and_leak_checked(tmp_path, tiny_bert, capsys):
    cfg = mlm_config(tmp_path, tiny_bert, epochs=1, selective_strength=2.0)
    assert main(["mlm", str(cfg)]) == 2  # its masking reads labels: the fold file must exist first
    assert "run `python -m dontstop folds" in capsys.readouterr().err
    for stage in ("folds", "mlm", "train"):
        assert main([stage, str(cfg)]) == 0
    out = tmp_path / "models" / "mlm" / "tapt"
    for k in range(3):
        scores = json.loads((out / f"fold{k}" / "mlm_scores.json").read_text())
        assert scores["label_folds"] == sorted({0, 1, 2} - {k})  # never its own fold's labels
    assert (tmp_path / "oof" / "tapt" / "scores.json").is_file()
    tampered = out / "fold1" / "mlm_scores.json"  # a checkpoint that claims to have seen fold 1's labels
    tampered.write_text(json.dumps({**json.loads(tampered.read_text()), "label_folds": [0, 1, 2]}))
    assert main(["train", str(cfg), "--fold", "1", "--force"]) == 2
    assert "leak:" in capsys.readouterr().err


def test_leak_guard_is_a_pure_check(tmp_path):
    from dontstop.leak import LeakError, check_provenance, fold_backbone

    check_provenance([0, 2, 3], fold=1, source="x")
    check_provenance([], fold=0, source="x")
    with pytest.raises(LeakError, match="x was fit on the labels of folds \\[0, 1\\], which include fold 1"):
        check_provenance([1, 0], fold=1, source="x")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "mlm_scores.json").write_text(json.dumps({"label_folds": []}))
    assert fold_backbone(str(plain), 3) == str(plain)
    (plain / "mlm_scores.json").write_text(json.dumps({"label_folds": [0, 1, 2]}))  # one checkpoint, all labels
    with pytest.raises(LeakError):
        fold_backbone(str(plain), 0)
    (tmp_path / "per" / "fold0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="none for fold 1"):
        fold_backbone(str(tmp_path / "per"), 1)


def test_a_backbone_with_a_head_keeps_it_and_early_stopping(tmp_path, tiny_bert, capsys):
    cfg = mlm_config(tmp_path, tiny_bert, epochs=1)
    assert main(["mlm", str(cfg)]) == 0
    first = tmp_path / "models" / "mlm" / "tapt"
    assert main(["mlm", str(cfg), f"mlm.backbone={first}", "mlm.name=second", "mlm.lr=0.0", "mlm.epochs=20",
                 "mlm.eval_every=2", "mlm.early_stopping_patience=2", "mlm.warmup_ratio=0.0"]) == 0
    err = capsys.readouterr().err
    assert f"kept the MLM head of {first}" in err and "early stop" in err
    scores = json.loads((tmp_path / "models" / "mlm" / "second" / "mlm_scores.json").read_text())
    assert scores["head_initialised"] is False
    assert scores["steps"] < scores["total_steps"] and len(scores["history"]) == 3  # lr 0: never improves
    assert scores["perplexity_after"] == pytest.approx(scores["perplexity_before"], rel=1e-6)


def test_mlm_two_process_data_parallel_on_cpu(tmp_path, tiny_bert):
    import os
    import subprocess
    import sys

    cfg = mlm_config(tmp_path, tiny_bert, epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dontstop", "mlm", str(cfg), "mlm.grad_accum=2"],
                            capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "models" / "mlm" / "tapt" / "mlm_scores.json").read_text())
    single = json.loads(json.dumps(scores))
    assert np.isfinite(scores["perplexity_after"]) and scores["steps"] == scores["total_steps"]
    # two processes share each epoch's batches: half the optimizer steps of one process (grad_accum 2)
    n_batches = -(-single["n_sequences"] // MLM["batch_size"])
    assert scores["total_steps"] == max(1, (n_batches // 2) // 2)
