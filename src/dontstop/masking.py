"""Dynamic masking for the MLM ("Don't Stop Pretraining") stage: pure numpy, re-drawn every time a batch is seen.

The data collator calls `mask_batch` on padded token ids; nothing here reads files or touches torch. Words come
from the fast tokenizer's own word ids (`word_starts_from_word_ids`), so whole-word and span masking work the
same for WordPiece ('##'), SentencePiece ('▁') and byte-level BPE ('Ġ') vocabularies.

Strategies:
- `token`: each real token chosen independently (original BERT).
- `whole_word`: each word chosen with the masking probability, all its sub-tokens together (BERT wwm); a token is
  chosen with the same probability as under `token`, so the masking rate does not move when the strategy does.
- `span`: SpanBERT spans of whole words, geometric lengths, until a per-sequence token budget is met.

`token_importance` turns labelled training rows into per-vocabulary-id weights for task-guided selective
masking ("Train No Evil", Gu et al. 2020); callers score it on training folds only, never the validation fold.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

STRATEGIES = ("token", "whole_word", "span")
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


def word_starts_from_word_ids(word_ids: Sequence[int | None]) -> np.ndarray:
    """bool array, True where a token begins a new word (word id differs from the previous token's) and for
    tokens with word id None (special tokens). Works for any fast tokenizer (WordPiece '##', SentencePiece '▁',
    byte-level BPE 'Ġ') because it uses the tokenizer's own word ids (BatchEncoding.word_ids(i))."""
    starts = np.zeros(len(word_ids), dtype=bool)
    previous = None
    for position, word_id in enumerate(word_ids):
        starts[position] = word_id is None or position == 0 or word_id != previous
        previous = word_id
    return starts


def _validate(input_ids, special_mask, word_starts, token_weights, *, mask_token_id, vocab_size, mlm_probability,
              mask_replace_prob, random_replace_prob, strategy, span_mean, span_max) -> None:
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm.mlm_probability must be in (0, 1), got {mlm_probability}")
    for name, value in (("mask_replace_prob", mask_replace_prob), ("random_replace_prob", random_replace_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"mlm.{name} must be in [0, 1], got {value}")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(f"mlm.mask_replace_prob + mlm.random_replace_prob must be <= 1, got "
                         f"{mask_replace_prob} + {random_replace_prob}")
    if strategy not in STRATEGIES:
        raise ValueError(f"mlm.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if span_mean < 1:
        raise ValueError(f"mlm.span_mean must be >= 1 (a span is at least one word), got {span_mean}")
    if span_max < 1:
        raise ValueError(f"mlm.span_max must be >= 1, got {span_max}")
    if vocab_size < 1:
        raise ValueError(f"mlm.vocab_size must be >= 1, got {vocab_size}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mlm.mask_token_id must be in range(vocab_size={vocab_size}), got {mask_token_id}")
    if input_ids.ndim != 2:
        raise ValueError(f"mlm input_ids must be 2-D (batch, length), got shape {input_ids.shape}")
    for name, array in (("special_mask", special_mask), ("word_starts", word_starts), ("token_weights", token_weights)):
        if array is not None and array.shape != input_ids.shape:
            raise ValueError(f"mlm {name} shape {array.shape} must equal input_ids shape {input_ids.shape}")
    if token_weights is not None:
        if strategy == "span":
            raise ValueError("mlm.strategy 'span' does not support token_weights (selective masking); "
                             "use 'whole_word' or 'token'")
        if not np.all(np.isfinite(token_weights)) or np.any(token_weights < 0):
            raise ValueError("mlm token_weights must be finite and >= 0")


def _word_index(special_mask: np.ndarray, word_starts: np.ndarray) -> np.ndarray:
    """(B, L) int, a batch-wide unique index per word. A special token is its own word and ends the word before
    it, and every row starts a new word, so no word crosses a special token or a row boundary."""
    starts = word_starts | special_mask
    starts[:, 1:] |= special_mask[:, :-1]
    starts[:, 0] = True
    return np.cumsum(starts.ravel()).reshape(starts.shape) - 1


def _choose_spans(word_lengths: np.ndarray, word_segments: np.ndarray, budget: int, rng: np.random.Generator,
                  span_mean: float, span_max: int) -> list[tuple[int, int]]:
    """SpanBERT placement within one sequence's real words (in order). Returns (first word, number of words) per
    span. Spans start at a random unchosen word, stop at a segment end (a special token) or a chosen word, and
    the last one stops as soon as the token budget is met."""
    chosen = np.zeros(len(word_lengths), dtype=bool)
    spans, n_tokens = [], 0
    while n_tokens < budget and not chosen.all():
        length = min(int(rng.geometric(1.0 / span_mean)), span_max)  # support 1, 2, ...; mean = span_mean
        first = int(rng.choice(np.flatnonzero(~chosen)))
        word = first
        while (word < len(word_lengths) and word - first < length and not chosen[word]
               and word_segments[word] == word_segments[first] and n_tokens < budget):
            chosen[word] = True
            n_tokens += int(word_lengths[word])
            word += 1
        spans.append((first, word - first))
    return spans


def _span_choice(word_index: np.ndarray, special_mask: np.ndarray, rng: np.random.Generator,
                 mlm_probability: float, span_mean: float, span_max: int) -> np.ndarray:
    chosen = np.zeros(special_mask.shape, dtype=bool)
    segment_index = np.cumsum(special_mask, axis=1)  # changes at every special token, so spans cannot cross one
    for row in range(special_mask.shape[0]):
        real = ~special_mask[row]
        n_real = int(real.sum())
        if n_real == 0:
            continue
        budget = max(1, int(round(mlm_probability * n_real)))
        words, first_pos, lengths = np.unique(word_index[row][real], return_index=True, return_counts=True)
        segments = segment_index[row][real][first_pos]
        for first, n_words in _choose_spans(lengths, segments, budget, rng, span_mean, span_max):
            chosen[row] |= np.isin(word_index[row], words[first:first + n_words])
    return chosen


def mask_batch(input_ids: np.ndarray, special_mask: np.ndarray, word_starts: np.ndarray, rng: np.random.Generator, *,
               mask_token_id: int, vocab_size: int, special_ids: Sequence[int] = (), mlm_probability: float = 0.15,
               mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1, strategy: str = "whole_word",
               span_mean: float = 3.0, span_max: int = 10, token_weights: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """input_ids (B, L) int64 (already padded); special_mask (B, L) bool, True for special and pad tokens (never
    masked); word_starts (B, L) bool. Returns (masked_input_ids, labels) where labels = original id at chosen
    positions and -100 elsewhere. Of the chosen positions, mask_replace_prob become mask_token_id,
    random_replace_prob a random id drawn uniformly from range(vocab_size) excluding special_ids, the rest keep
    the original token. Does not modify its inputs."""
    input_ids = np.asarray(input_ids)
    special_mask = np.asarray(special_mask, dtype=bool)
    word_starts = np.asarray(word_starts, dtype=bool)
    weights = None if token_weights is None else np.asarray(token_weights, dtype=np.float64)
    _validate(input_ids, special_mask, word_starts, weights, mask_token_id=mask_token_id, vocab_size=vocab_size,
              mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
              random_replace_prob=random_replace_prob, strategy=strategy, span_mean=span_mean, span_max=span_max)
    real = ~special_mask

    if strategy == "token":
        probability = mlm_probability if weights is None else np.minimum(1.0, mlm_probability * weights)
        chosen = (rng.random(input_ids.shape) < probability) & real
    else:
        word_index = _word_index(special_mask, word_starts)
        if strategy == "whole_word":
            n_words = int(word_index.max()) + 1
            if weights is None:
                word_probability = np.full(n_words, mlm_probability)
            else:  # mean weight over the word's real tokens; special-only words are never chosen anyway
                weight_sum = np.bincount(word_index.ravel(), weights=(weights * real).ravel(), minlength=n_words)
                real_count = np.bincount(word_index.ravel(), weights=real.ravel(), minlength=n_words)
                word_probability = np.minimum(1.0, mlm_probability * weight_sum / np.maximum(real_count, 1))
            chosen = (rng.random(n_words) < word_probability)[word_index] & real
        else:
            chosen = _span_choice(word_index, special_mask, rng, mlm_probability, span_mean, span_max)

    labels = np.where(chosen, input_ids, IGNORE_INDEX).astype(np.int64)
    masked_ids = input_ids.astype(np.int64, copy=True)
    # one uniform draw per position splits the chosen ones into [mask | random | keep]
    action = rng.random(input_ids.shape)
    to_mask = chosen & (action < mask_replace_prob)
    to_random = chosen & (action >= mask_replace_prob) & (action < mask_replace_prob + random_replace_prob)
    masked_ids[to_mask] = mask_token_id
    n_random = int(to_random.sum())
    if n_random:
        allowed_ids = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids, dtype=np.int64))
        if allowed_ids.size == 0:
            raise ValueError(f"mlm.special_ids cover all of range(vocab_size={vocab_size}); no id left to draw")
        masked_ids[to_random] = rng.choice(allowed_ids, size=n_random)
    return masked_ids, labels


def token_importance(docs_token_ids: Sequence[Sequence[int]], targets: np.ndarray, vocab_size: int,
                     min_count: int = 3, strength: float = 2.0) -> np.ndarray:
    """Per-vocabulary-id masking weight (float32, shape (vocab_size,)) for task-guided selective masking
    ("Train No Evil", Gu et al. 2020), scored ONLY from the labelled rows passed in (callers pass the training
    folds' rows, never a validation fold's). targets (n_docs, T) float (regression values or one-hot / 0-1
    labels). Score of a token = max over target columns of |mean target of docs containing it - overall mean| /
    overall std, multiplied by count / (count + min_count) to shrink rare tokens; tokens seen in fewer than
    min_count docs (or never) score 0. Weight = 1 + strength * score / max(score) (so weights lie in
    [1, 1 + strength]), then normalised so the mean weight over all token occurrences in docs is 1."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.ndim != 2 or targets.shape[0] != len(docs_token_ids):
        raise ValueError(f"mlm token_importance: targets shape {targets.shape} must be (n_docs={len(docs_token_ids)},"
                         f" n_targets)")
    if min_count < 0:
        raise ValueError(f"mlm.min_count must be >= 0, got {min_count}")
    if strength < 0:
        raise ValueError(f"mlm.strength must be >= 0, got {strength}")
    docs = [np.asarray(doc, dtype=np.int64).ravel() for doc in docs_token_ids]
    occurrences = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
    if occurrences.size and (occurrences.min() < 0 or occurrences.max() >= vocab_size):
        raise ValueError(f"mlm token_importance: token ids must be in range(vocab_size={vocab_size}), got "
                         f"{occurrences.min()}..{occurrences.max()}")

    # each doc counts once per token it contains, so one long doc repeating a token cannot dominate its score
    present = [np.unique(doc) for doc in docs]
    present_ids = np.concatenate(present) if present else np.zeros(0, dtype=np.int64)
    present_doc = np.repeat(np.arange(len(docs)), [len(ids) for ids in present])
    doc_count = np.bincount(present_ids, minlength=vocab_size).astype(np.float64)

    score = np.zeros(vocab_size)
    for column in targets.T:
        std = column.std()
        if len(column) == 0 or std == 0:  # a constant target says nothing about any token
            continue
        target_sum = np.bincount(present_ids, weights=column[present_doc], minlength=vocab_size)
        mean_with_token = target_sum / np.maximum(doc_count, 1)
        score = np.maximum(score, np.abs(mean_with_token - column.mean()) / std)
    seen_enough = doc_count >= max(min_count, 1)
    score = np.where(seen_enough, score * doc_count / np.maximum(doc_count + min_count, 1), 0.0)

    weights = np.ones(vocab_size)
    if score.max() > 0:
        weights += strength * score / score.max()
    occurrence_count = np.bincount(occurrences, minlength=vocab_size)
    if occurrence_count.sum() > 0:
        weights /= (weights * occurrence_count).sum() / occurrence_count.sum()
    return weights.astype(np.float32)
