"""The MLM corpus: unlabelled documents from the competition and extra files, de-duplicated, split into
training and held-out documents, tokenised in chunks into flat token arrays, and cut into sequences.

Memory holds the documents' text and one flat int32 token array (plus a bool per token); sequences are
(start, end) offsets into it, so nothing grows with the corpus beyond the token arrays.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dontstop.config import Config

CHUNK_DOCS = 1000  # documents per tokenizer call: bounded memory, still fast batched tokenisation


def read_corpus_file(path: str, column: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"mlm.extra: corpus file {p} does not exist")
    if p.suffix == ".txt":
        return [line.rstrip("\n") for line in p.open(encoding="utf-8")]
    frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    if column not in frame.columns:
        raise ValueError(f"mlm.extra: {p} has no column {column!r} (columns: {list(frame.columns)})")
    return frame[column].dropna().astype(str).tolist()


def collect_documents(cfg: Config, log=print) -> tuple[list[str], list[int]]:
    """Unique documents and how many times each enters training (its repeat). No label is read."""
    from dontstop.data import read_csv

    spec, m = cfg.competition, cfg.mlm
    sources: list[tuple[list[str], int, str]] = []
    for use, path, what in ((m.use_train_text, spec.train, "train"), (m.use_test_text, spec.test, "test")):
        if use and path:
            frame = read_csv(path, what)
            missing = [c for c in spec.text_columns if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: text column(s) {missing} (competition.text_columns) are missing")
            texts = frame[spec.text_columns].fillna("").astype(str).agg("\n".join, axis=1).tolist()
            sources.append((texts, 1, f"{what} ({path})"))
    for extra in m.extra:
        sources.append((read_corpus_file(extra.path, extra.column), extra.repeat, extra.path))
    repeat_of: dict[str, int] = {}
    seen_keys: set[bytes] = set()  # 16-byte digests, not a second copy of the corpus
    for texts, repeat, name in sources:
        added = 0
        for text in texts:
            folded = re.sub(r"\s+", " ", text).strip().lower()
            key = hashlib.blake2b(folded.encode(), digest_size=16).digest()
            if not folded or key in seen_keys:
                continue  # exact duplicates (after whitespace / case folding) would over-weight a text
            seen_keys.add(key)
            repeat_of[text] = repeat
            added += 1
        log(f"mlm corpus: {added} new documents from {name} (x{repeat})")
    if not repeat_of:
        raise ValueError("mlm: the corpus is empty (enable mlm.use_train_text / use_test_text or add mlm.extra)")
    docs = list(repeat_of)
    return docs, [repeat_of[d] for d in docs]


def corpus_hash(docs: list[str], repeats: list[int]) -> str:
    digest = hashlib.sha256()
    for doc, repeat in zip(docs, repeats):
        digest.update(f"{repeat}\x00{doc}\x01".encode())
    return digest.hexdigest()


@dataclass
class TokenStream:
    """Documents as one flat token array with per-token flags; sequences index into it."""
    tokens: np.ndarray  # int32
    word_starts: np.ndarray  # bool: token begins a word (whole-word / span masking)
    special: np.ndarray  # bool: separator tokens inside the stream
    seq_bounds: np.ndarray  # (n_sequences, 2) start, end offsets


def tokenize_documents(docs: list[str], repeats: list[int], tokenizer, max_length: int, packing: str,
                       progress: bool = False) -> TokenStream:
    """Tokenise in chunks; `packed` joins documents with [SEP] into full blocks (the remainder is kept as a
    short last block), `line_by_line` gives each document its own windows (long ones split, tail kept)."""
    from dontstop.masking import word_starts_from_word_ids
    from tqdm.auto import tqdm

    content = max_length - 2  # room for [CLS] ... [SEP]
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    token_parts, start_parts, special_parts, bounds = [], [], [], []
    offset = 0
    pack_start = 0
    for first in tqdm(range(0, len(docs), CHUNK_DOCS), desc="tokenising", disable=not progress, leave=False):
        chunk = docs[first:first + CHUNK_DOCS]
        enc = tokenizer(chunk, add_special_tokens=False, truncation=False, verbose=False)
        for i, ids in enumerate(enc["input_ids"]):
            if not ids:
                continue
            starts = word_starts_from_word_ids(enc.word_ids(i))
            for _ in range(repeats[first + i]):
                if packing == "packed":
                    token_parts += [np.asarray(ids, np.int32), np.asarray([sep], np.int32)]
                    start_parts += [starts, np.ones(1, bool)]
                    special_parts += [np.zeros(len(ids), bool), np.ones(1, bool)]
                    offset += len(ids) + 1
                else:
                    token_parts.append(np.asarray(ids, np.int32))
                    start_parts.append(starts)
                    special_parts.append(np.zeros(len(ids), bool))
                    bounds += [(s, min(s + content, offset + len(ids))) for s in range(offset, offset + len(ids), content)]
                    offset += len(ids)
    if packing == "packed":
        bounds = [(s, min(s + content, offset)) for s in range(pack_start, offset, content)]
    if not token_parts:
        raise ValueError("mlm: the corpus has no tokens after tokenisation")
    return TokenStream(np.concatenate(token_parts), np.concatenate(start_parts), np.concatenate(special_parts),
                       np.asarray(bounds, dtype=np.int64).reshape(-1, 2))


def split_heldout(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out documents: whole documents, seeded, never also in training."""
    held = np.zeros(n_docs, dtype=bool)
    n_held = int(round(fraction * n_docs))
    if fraction > 0 and n_docs >= 2:
        n_held = min(max(n_held, 1), n_docs - 1)
        held[np.random.default_rng(seed).permutation(n_docs)[:n_held]] = True
    return held
