"""Competition data: read and validate the CSVs, encode targets, tokenise, and batch by length.

Reads the train / test / sample-submission files a config names. Every data error names the file, the
column and example rows, so nobody needs a traceback to fix their input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from dontstop.config import CompetitionConfig

CLASSIFICATION = ("binary", "multiclass", "multilabel")


class DataError(ValueError):
    """The competition data does not match the config; the message names file, column and rows."""


@dataclass
class Competition:
    spec: CompetitionConfig
    train: pd.DataFrame
    test: pd.DataFrame | None
    sample_submission: pd.DataFrame | None
    classes: list[str] | None  # multiclass label order (prediction column k is classes[k])

    @property
    def output_names(self) -> list[str]:
        """One name per model output: target columns, or class names for multiclass."""
        return list(self.classes) if self.spec.task == "multiclass" else list(self.spec.target_columns)

    @property
    def pred_columns(self) -> list[str]:
        return [f"pred_{name}" for name in self.output_names]


def _examples(values: Sequence, k: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:k])
    return shown + (f", ... ({len(values)} in all)" if len(values) > k else "")


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist (set competition.{what} in the config)")
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{what} file {path} could not be read as CSV: {err}") from err


def _require_columns(df: pd.DataFrame, columns: Sequence[str], path: str, key: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} named by competition.{key} are missing; "
                        f"the file has {list(df.columns)}")


def _clean_ids(df: pd.DataFrame, spec: CompetitionConfig, path: str) -> pd.DataFrame:
    ids = df[spec.id_column]
    if ids.isna().any():
        raise DataError(f"{path}: column {spec.id_column!r} has {int(ids.isna().sum())} empty ids "
                        f"(rows {_examples(np.flatnonzero(ids.isna().to_numpy()))})")
    df = df.copy()
    df[spec.id_column] = ids.astype(str)
    dup = df[spec.id_column][df[spec.id_column].duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{path}: column {spec.id_column!r} has {dup.nunique()} duplicated ids, e.g. "
                        f"{_examples(dup.unique())}")
    return df


def _clean_texts(df: pd.DataFrame, spec: CompetitionConfig, path: str, log=print) -> pd.DataFrame:
    df = df.copy()
    for column in spec.text_columns:
        values = df[column]
        bad = values.isna() | values.astype(str).str.strip().eq("")
        if bad.any():
            ids = df.loc[bad, spec.id_column].tolist()
            if spec.nan_text == "error":
                raise DataError(f"{path}: column {column!r} has {int(bad.sum())} empty or missing texts, ids "
                                f"{_examples(ids)}; fix the data or set competition.nan_text: empty")
            log(f"warning: {path}: column {column!r}: {int(bad.sum())} empty or missing texts read as '' "
                f"(ids {_examples(ids)})")
        df[column] = values.fillna("").astype(str)
    return df


def load_competition(spec: CompetitionConfig, log=print, need_test: bool = True) -> Competition:
    """Read and validate the competition files named by `spec`."""
    train_path = spec.train
    train = read_csv(train_path, "train")
    _require_columns(train, [spec.id_column], train_path, "id_column")
    _require_columns(train, spec.text_columns, train_path, "text_columns")
    _require_columns(train, spec.target_columns, train_path, "target_columns")
    if spec.group_column:
        _require_columns(train, [spec.group_column], train_path, "group_column")
    train = _clean_ids(train, spec, train_path)
    train = _clean_texts(train, spec, train_path, log)
    classes = _check_targets(train, spec, train_path)

    test = sample = None
    if spec.test and need_test:
        test = load_test(spec, spec.test, log)
    if spec.sample_submission and need_test:
        sample = read_csv(spec.sample_submission, "sample_submission")
        _require_columns(sample, [spec.id_column], spec.sample_submission, "id_column")
        sample = _clean_ids(sample, spec, spec.sample_submission)
        if test is not None:
            extra = sorted(set(sample[spec.id_column]) - set(test[spec.id_column]))
            if extra:
                raise DataError(f"{spec.sample_submission}: {len(extra)} ids are not in the test file "
                                f"{spec.test}, e.g. {_examples(extra)}")
    return Competition(spec, train, test, sample, classes)


def load_test(spec: CompetitionConfig, path: str | Path, log=print) -> pd.DataFrame:
    """Read and validate a test file: ids present and unique, the text columns present (empty texts per
    competition.nan_text). Used by `load_competition` and by offline `infer`, which has no train file."""
    test = read_csv(path, "test")
    _require_columns(test, [spec.id_column], str(path), "id_column")
    missing = [c for c in spec.text_columns if c not in test.columns]
    if missing:
        raise DataError(f"{path}: test file lacks the text column(s) {missing} the model reads "
                        f"(competition.text_columns); its columns are {list(test.columns)}")
    return _clean_texts(_clean_ids(test, spec, str(path)), spec, str(path), log)


def _check_targets(train: pd.DataFrame, spec: CompetitionConfig, path: str) -> list[str] | None:
    targets = train[spec.target_columns]
    missing = targets.isna().any(axis=1)
    if missing.any():
        raise DataError(f"{path}: {int(missing.sum())} rows have a missing target in {spec.target_columns}, "
                        f"ids {_examples(train.loc[missing, spec.id_column].tolist())}")
    if spec.task == "multiclass":
        labels = targets.iloc[:, 0].astype(str)
        classes = list(spec.classes) if spec.classes else sorted(labels.unique(), key=_natural_key)
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: column {spec.target_columns[0]!r} has labels {unknown} not in "
                            f"competition.classes {classes}")
        return classes
    if spec.task in ("binary", "multilabel"):
        for column in spec.target_columns:
            values = pd.to_numeric(targets[column], errors="coerce")
            bad = values.isna() | ~values.isin([0, 1])
            if bad.any():
                raise DataError(f"{path}: {spec.task} target column {column!r} must hold 0/1; rows with ids "
                                f"{_examples(train.loc[bad, spec.id_column].tolist())} hold "
                                f"{_examples(targets.loc[bad, column].tolist())}")
        return None
    for column in spec.target_columns:  # regression
        values = pd.to_numeric(targets[column], errors="coerce")
        if values.isna().any():
            bad = values.isna()
            raise DataError(f"{path}: regression target {column!r} is not numeric in rows with ids "
                            f"{_examples(train.loc[bad, spec.id_column].tolist())}")
        if spec.target_range is not None:
            low, high = spec.target_range
            bad = (values < low) | (values > high)
            if bad.any():
                raise DataError(f"{path}: {int(bad.sum())} values of {column!r} lie outside competition."
                                f"target_range {spec.target_range}, ids "
                                f"{_examples(train.loc[bad, spec.id_column].tolist())} values "
                                f"{_examples(values[bad].tolist())}")
    return None


def _natural_key(label: str) -> tuple:
    """Numeric labels sort as numbers ("2" before "10"), others alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def target_matrix(comp: Competition, df: pd.DataFrame | None = None) -> np.ndarray:
    """Targets as float32 (n, n_outputs): values, 0/1 labels, or one-hot classes for multiclass."""
    df = comp.train if df is None else df
    spec = comp.spec
    if spec.task == "multiclass":
        index = {c: i for i, c in enumerate(comp.classes)}
        codes = df[spec.target_columns[0]].astype(str).map(index).to_numpy()
        return np.eye(len(comp.classes), dtype=np.float32)[codes]
    return df[spec.target_columns].to_numpy(dtype=np.float32)


def metric_targets(comp: Competition, df: pd.DataFrame | None = None) -> np.ndarray:
    """Targets in the shape the metrics take: class indices for multiclass, 1-D for single-target tasks."""
    y = target_matrix(comp, df)
    if comp.spec.task == "multiclass":
        return y.argmax(1)
    return y[:, 0] if y.shape[1] == 1 else y


def metric_predictions(comp: Competition, preds: np.ndarray) -> np.ndarray:
    return preds[:, 0] if preds.shape[1] == 1 and comp.spec.task != "multiclass" else preds


# ---------------------------------------------------------------------------------------------- tokenising
def tokenize(comp: Competition, df: pd.DataFrame, tokenizer, max_length: int, chunk: int = 4096) -> list[dict]:
    """Token ids (and type ids) per row, unpadded. Several text columns are joined with the separator.

    Rows are tokenised in chunks and kept as int32 / int8 arrays: a Python list costs ~30x more memory per
    token, which at 100k rows was most of the host memory of a run (bench/scale.py)."""
    spec = comp.spec
    if spec.text_pair:  # (text, text_pair): truncation takes from the longer one first
        columns = [df[spec.text_columns[0]].tolist(), df[spec.text_columns[1]].tolist()]
    elif len(spec.text_columns) > 1:
        sep = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
        columns = [df[spec.text_columns].astype(str).agg(sep.join, axis=1).tolist()]
    else:
        columns = [df[spec.text_columns[0]].tolist()]
    rows = []
    for start in range(0, len(df), chunk):
        enc = tokenizer(*(c[start:start + chunk] for c in columns), truncation=True, max_length=max_length,
                        return_token_type_ids=True)
        types = enc.get("token_type_ids")
        rows += [{"input_ids": np.asarray(ids, dtype=np.int32),
                  "token_type_ids": np.asarray(types[i], dtype=np.int8) if types is not None else None}
                 for i, ids in enumerate(enc["input_ids"])]
    return rows


class TextDataset(torch.utils.data.Dataset):
    """Tokenised rows with optional targets and per-sample loss weights; item i keeps its row index."""

    def __init__(self, encodings: list[dict], targets: np.ndarray | None = None,
                 weights: np.ndarray | None = None):
        self.encodings = encodings
        self.targets = targets
        self.weights = weights
        self.lengths = np.array([len(e["input_ids"]) for e in encodings], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, **self.encodings[i]}
        if self.targets is not None:
            item["targets"] = self.targets[i]
        if self.weights is not None:
            item["weight"] = self.weights[i]
        return item


class Collator:
    """Pads a batch to its own longest row (rounded up to `multiple_of`), never to max_length."""

    def __init__(self, pad_token_id: int, multiple_of: int = 1):
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(it["input_ids"]) for it in items)
        width = int(math.ceil(longest / self.multiple_of) * self.multiple_of)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        has_types = items[0].get("token_type_ids") is not None
        types = torch.zeros((n, width), dtype=torch.long) if has_types else None
        for row, it in enumerate(items):
            length = len(it["input_ids"])
            input_ids[row, :length] = torch.as_tensor(it["input_ids"])
            attention[row, :length] = 1
            if has_types:
                types[row, :length] = torch.as_tensor(it["token_type_ids"])
        batch = {"input_ids": input_ids, "attention_mask": attention,
                 "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
        if has_types:
            batch["token_type_ids"] = types
        if "targets" in items[0]:
            batch["targets"] = torch.as_tensor(np.stack([it["targets"] for it in items]), dtype=torch.float32)
        if "weight" in items[0]:
            batch["weight"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of similar length: little padding, yet a different order every epoch.

    Rows are shuffled, cut into mega-batches of `batch_size * group_factor`, sorted by length inside each,
    and split into batches whose order is shuffled again. The permutation of pass number e depends only on
    (seed, e), so a seed fixes the data order of a whole run.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True,
                 group_factor: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_factor = group_factor
        self.passes = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:  # evaluation: longest first, so an out-of-memory error shows at once
            order = np.argsort(-self.lengths, kind="stable")
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, self.passes])
            self.passes += 1
            order = rng.permutation(len(self.lengths))
            mega = self.batch_size * self.group_factor
            batches = []
            for start in range(0, len(order), mega):
                chunk = order[start:start + mega]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        for batch in batches:
            yield batch.tolist()
