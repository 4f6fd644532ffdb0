"""Competition data: validation errors that name file, column and rows; tokenising; length batching."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dontstop.config import CompetitionConfig
from dontstop.data import (Collator, DataError, LengthGroupedBatchSampler, load_competition, metric_targets,
                           target_matrix, tokenize)
from dontstop.demo import write_demo


@pytest.fixture()
def demo(tmp_path) -> Path:
    return write_demo(tmp_path / "demo", n_train=40, n_test=10, n_pool=0)


def spec(root: Path, **kw) -> CompetitionConfig:
    base = dict(name="demo", train=str(root / "train.csv"), test=str(root / "test.csv"),
                sample_submission=str(root / "sample_submission.csv"), text_columns=["text"],
                target_columns=["score"], task="regression", metric="rmse")
    base.update(kw)
    return CompetitionConfig(**base)


def edit(path: Path, fn) -> None:
    df = pd.read_csv(path)
    changed = fn(df)  # edits in place, or returns a new frame
    (df if changed is None else changed).to_csv(path, index=False)


def test_loads_clean_data(demo):
    comp = load_competition(spec(demo))
    assert len(comp.train) == 40 and len(comp.test) == 10
    assert all(isinstance(i, str) for i in comp.train["id"]) and comp.pred_columns == ["pred_score"]


def test_missing_file_names_the_key(demo):
    with pytest.raises(FileNotFoundError, match=r"test file .*nope.csv does not exist \(set competition.test"):
        load_competition(spec(demo, test=str(demo / "nope.csv")))


def test_missing_column_names_file_and_column(demo):
    with pytest.raises(DataError, match=r"train.csv: column\(s\) \['body'\] named by competition.text_columns"):
        load_competition(spec(demo, text_columns=["body"]))


def test_test_file_must_have_the_text_columns(demo):
    edit(demo / "test.csv", lambda df: df.rename(columns={"title": "heading"}))
    with pytest.raises(DataError, match=r"test file lacks the text column\(s\) \['title'\]"):
        load_competition(spec(demo, text_columns=["title", "text"]))


def test_duplicate_ids(demo):
    def dup(df):
        df.loc[3, "id"] = df.loc[0, "id"]
    edit(demo / "train.csv", dup)
    first = pd.read_csv(demo / "train.csv")["id"][0]
    with pytest.raises(DataError, match=f"duplicated ids, e.g. '{first}'"):
        load_competition(spec(demo))


def test_nan_text_policy(demo):
    def blank(df):
        df.loc[[2, 5], "text"] = np.nan
        df.loc[7, "text"] = "   "
    edit(demo / "train.csv", blank)
    bad_id = pd.read_csv(demo / "train.csv")["id"][2]
    with pytest.raises(DataError, match=f"3 empty or missing texts, ids '{bad_id}'"):
        load_competition(spec(demo))
    messages = []
    comp = load_competition(spec(demo, nan_text="empty"), log=messages.append)
    assert comp.train["text"].iloc[2] == "" and any("3 empty or missing texts" in m for m in messages)


def test_targets_out_of_range_and_missing(demo):
    edit(demo / "train.csv", lambda df: df.__setitem__("score", df["score"].where(df.index != 4, 9.5)))
    with pytest.raises(DataError, match=r"1 values of 'score' lie outside competition.target_range \[1.0, 5.0\].*9.5"):
        load_competition(spec(demo, target_range=[1.0, 5.0]))
    edit(demo / "train.csv", lambda df: df.__setitem__("score", df["score"].where(df.index != 4, np.nan)))
    with pytest.raises(DataError, match="1 rows have a missing target"):
        load_competition(spec(demo))


def test_binary_targets_must_be_01(tmp_path):
    root = write_demo(tmp_path / "bin", task="binary", n_train=30, n_test=5, n_pool=0)
    edit(root / "train.csv", lambda df: df.__setitem__("label", df["label"].where(df.index != 1, 2)))
    with pytest.raises(DataError, match="binary target column 'label' must hold 0/1"):
        load_competition(spec(root, target_columns=["label"], task="binary", metric="auc"))


def test_multiclass_classes_and_encoding(tmp_path):
    root = write_demo(tmp_path / "mc", task="multiclass", n_train=40, n_test=5, n_pool=0)
    comp = load_competition(spec(root, target_columns=["topic"], task="multiclass", metric="accuracy"))
    assert comp.classes == sorted(comp.train["topic"].unique())
    onehot = target_matrix(comp)
    assert onehot.shape == (40, len(comp.classes)) and (onehot.sum(1) == 1).all()
    assert (np.asarray(comp.classes)[metric_targets(comp)] == comp.train["topic"].to_numpy()).all()
    with pytest.raises(DataError, match="not in competition.classes"):
        load_competition(spec(root, target_columns=["topic"], task="multiclass", metric="accuracy",
                              classes=["food", "hotel"]))


def test_sample_submission_ids_must_be_in_test(demo):
    edit(demo / "sample_submission.csv", lambda df: df.__setitem__("id", df["id"].where(df.index != 0, "ghost")))
    with pytest.raises(DataError, match="1 ids are not in the test file.*'ghost'"):
        load_competition(spec(demo))


def test_tokenize_joins_columns_or_pairs(demo, tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    comp = load_competition(spec(demo, text_columns=["title", "text"]))
    joined = tokenize(comp, comp.train.head(3), tok, max_length=64)
    assert all((e["input_ids"] == tok.sep_token_id).sum() == 2 for e in joined)  # title [SEP] text [SEP]
    assert all(e["input_ids"].dtype == np.int32 for e in joined)  # compact: not Python lists
    assert all(len(e["input_ids"]) <= 64 for e in joined)
    pair_comp = load_competition(spec(demo, text_columns=["title", "text"], text_pair=True))
    pairs = tokenize(pair_comp, pair_comp.train.head(3), tok, max_length=64)
    assert all(1 in e["token_type_ids"] for e in pairs)  # the second segment has type id 1
    assert not any(1 in e["token_type_ids"] for e in joined)


def test_length_grouped_sampler_covers_every_row_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3, group_factor=10)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(1000))
    assert first != second  # a new order every pass
    again = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3, group_factor=10)
    assert list(again) == first  # ... but fixed by the seed
    padded = sum(len(b) * lengths[b].max() for b in first)
    random_batches = np.array_split(rng.permutation(1000), len(first))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.75 * padded_random  # length grouping saves most of the padding
    eval_batches = list(LengthGroupedBatchSampler(lengths, 16, seed=0, shuffle=False))
    assert lengths[eval_batches[0]].min() >= lengths[eval_batches[-1]].max()


def test_collator_pads_to_the_batch_longest_row():
    items = [{"index": 0, "input_ids": [2, 5, 6, 3], "token_type_ids": [0, 0, 0, 0], "targets": np.array([1.0])},
             {"index": 1, "input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "targets": np.array([0.0])}]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert Collator(pad_token_id=0, multiple_of=8)(items)["input_ids"].shape == (2, 8)
