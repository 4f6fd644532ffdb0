"""Tests for dontstop.masking: masking rates and the 80/10/10 split, whole words (for WordPiece, SentencePiece
and byte-level BPE tokenizers trained here, offline) and SpanBERT spans, selective weights, token importance."""
from __future__ import annotations

import random

import numpy as np
import pytest

from dontstop.masking import _choose_spans, mask_batch, token_importance, word_starts_from_word_ids

VOCAB_SIZE = 1000
SPECIAL_IDS = (0, 1, 2, 3, 4)  # pad, unk, cls, sep, mask
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 2, 3, 4


def random_batch(seed: int = 0, batch: int = 64, length: int = 128):
    """Padded random ids framed by cls/sep, random word boundaries (about two tokens per word)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(len(SPECIAL_IDS), VOCAB_SIZE, size=(batch, length))
    special_mask = np.zeros((batch, length), dtype=bool)
    for row, n_real in enumerate(rng.integers(length // 2, length - 1, size=batch)):
        input_ids[row, 0], input_ids[row, n_real + 1], input_ids[row, n_real + 2:] = CLS_ID, SEP_ID, PAD_ID
        special_mask[row, 0] = True
        special_mask[row, n_real + 1:] = True
    word_starts = rng.random((batch, length)) < 0.5
    return input_ids, special_mask, word_starts


def run(input_ids, special_mask, word_starts, seed=1, **kwargs):
    kwargs.setdefault("mask_token_id", MASK_ID)
    kwargs.setdefault("vocab_size", VOCAB_SIZE)
    kwargs.setdefault("special_ids", SPECIAL_IDS)
    return mask_batch(input_ids, special_mask, word_starts, np.random.default_rng(seed), **kwargs)


def word_groups(special_mask, word_starts):
    """(row, first, end) of every real word, built independently of the module's cumsum trick."""
    groups = []
    for row in range(special_mask.shape[0]):
        first = None
        for pos in range(special_mask.shape[1] + 1):
            boundary = pos == special_mask.shape[1] or special_mask[row, pos] or word_starts[row, pos]
            if boundary and first is not None:
                groups.append((row, first, pos))
                first = None
            if pos < special_mask.shape[1] and not special_mask[row, pos] and first is None:
                first = pos
    return groups


def assert_whole_words(labels, special_mask, word_starts):
    for row, first, end in word_groups(special_mask, word_starts):
        chosen = labels[row, first:end] != -100
        assert chosen.all() or not chosen.any(), f"word split in row {row} positions {first}:{end}"


def test_word_starts_from_word_ids():
    starts = word_starts_from_word_ids([None, 0, 0, 1, 2, 2, 2, None, None])
    assert starts.tolist() == [True, True, False, True, True, False, False, True, True]
    assert word_starts_from_word_ids([]).shape == (0,)


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_rates_split_and_labels(strategy):
    input_ids, special_mask, word_starts = random_batch()
    originals = [input_ids.copy(), special_mask.copy(), word_starts.copy()]
    masked, labels = run(input_ids, special_mask, word_starts, strategy=strategy)

    for before, after in zip(originals, (input_ids, special_mask, word_starts)):
        np.testing.assert_array_equal(before, after)  # inputs untouched
    chosen = labels != -100
    assert not (chosen & special_mask).any()
    np.testing.assert_array_equal(labels[chosen], input_ids[chosen])
    np.testing.assert_array_equal(masked[~chosen], input_ids[~chosen])
    assert abs(chosen.sum() / (~special_mask).sum() - 0.15) < 0.02

    n_chosen = chosen.sum()
    became_mask = chosen & (masked == MASK_ID)
    changed_other = chosen & (masked != MASK_ID) & (masked != input_ids)
    kept = chosen & (masked == input_ids)
    assert abs(became_mask.sum() / n_chosen - 0.8) < 0.04
    assert abs(changed_other.sum() / n_chosen - 0.1) < 0.03  # a random id can equal the original (p = 1/995)
    assert abs(kept.sum() / n_chosen - 0.1) < 0.03
    assert not np.isin(masked[chosen & (masked != MASK_ID)], SPECIAL_IDS).any()
    assert masked.dtype == np.int64 and labels.dtype == np.int64
    if strategy != "token":
        assert_whole_words(labels, special_mask, word_starts)


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_same_seed_same_output(strategy):
    batch = random_batch()
    first, second, other = (run(*batch, seed=s, strategy=strategy) for s in (5, 5, 6))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])


def test_replace_probabilities_are_respected():
    batch = random_batch()
    masked, labels = run(*batch, strategy="token", mask_replace_prob=1.0, random_replace_prob=0.0)
    assert (masked[labels != -100] == MASK_ID).all()
    masked, labels = run(*batch, strategy="token", mask_replace_prob=0.0, random_replace_prob=0.0)
    np.testing.assert_array_equal(masked, batch[0])


def test_span_rate_budget_and_no_special():
    input_ids, special_mask, word_starts = random_batch(seed=3)
    _, labels = run(input_ids, special_mask, word_starts, strategy="span", span_mean=3.0, span_max=10)
    chosen = labels != -100
    n_real = (~special_mask).sum(axis=1)
    budget = np.maximum(1, np.round(0.15 * n_real))
    longest_word = max(end - first for _, first, end in word_groups(special_mask, word_starts))
    assert (chosen.sum(axis=1) >= budget).all()
    assert (chosen.sum(axis=1) <= budget + longest_word - 1).all()  # only the last word may overshoot


def test_span_lengths_follow_geometric_and_clip():
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(40):  # sparse budget, so spans rarely run into each other and truncate
        spans = _choose_spans(np.ones(3000, dtype=int), np.zeros(3000, dtype=int), 150, rng, 3.0, 1000)
        lengths += [n_words for _, n_words in spans[:-1]]  # the last span is cut by the budget
    assert len(lengths) > 1000
    assert abs(np.mean(lengths) - 3.0) < 0.25

    spans = _choose_spans(np.ones(500, dtype=int), np.zeros(500, dtype=int), 200, rng, 5.0, 2)
    assert max(n for _, n in spans) <= 2

    segments = np.repeat(np.arange(50), 4)  # 50 segments of 4 words: a span must stay inside one
    for first, n_words in _choose_spans(np.ones(200, dtype=int), segments, 60, rng, 6.0, 10):
        assert len(set(segments[first:first + n_words])) == 1


@pytest.mark.parametrize("strategy", ["token", "whole_word"])
def test_token_weights_raise_chosen_rate(strategy):
    input_ids, special_mask, word_starts = random_batch(seed=4)
    heavy = np.zeros(input_ids.shape, dtype=bool)
    heavy[:, ::2] = True
    if strategy == "whole_word":  # one-token words, so each word's mean weight is its token's weight
        word_starts = np.ones_like(word_starts)
    weights = np.where(heavy, 3.0, 1.0)
    _, labels = run(input_ids, special_mask, word_starts, strategy=strategy, token_weights=weights)
    chosen, real = labels != -100, ~special_mask
    heavy_rate = chosen[heavy & real].mean()
    light_rate = chosen[~heavy & real].mean()
    assert heavy_rate > 2.2 * light_rate
    assert abs(heavy_rate - 0.45) < 0.05 and abs(light_rate - 0.15) < 0.03


# --- whole words for real tokenizer families ---------------------------------------------------------------

WORDS = ("understanding remarkable competition transformers encoder pretraining vocabulary selective "
         "tokenization representation magnificent extraordinary unbelievable photosynthesis "
         "the a of and to in students write essays about science history language model data").split()


def sentences(n: int = 60, seed: int = 0) -> list[str]:
    rand = random.Random(seed)
    return [" ".join(rand.choice(WORDS) for _ in range(rand.randint(4, 12))) + rand.choice([".", "!", "?"])
            for _ in range(n)]


def wordpiece_tokenizer(texts):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=70, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=tokenizer)


def generic_tokenizer(texts, kind):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    if kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=specials, unk_token="<unk>")
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tokenizer.token_to_id("<s>")),
                                              ("</s>", tokenizer.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                                   mask_token="<mask>")


@pytest.fixture(scope="module")
def tokenizers_by_family():
    texts = sentences()
    return {"wordpiece": wordpiece_tokenizer(texts), "unigram": generic_tokenizer(texts, "unigram"),
            "byte_bpe": generic_tokenizer(texts, "byte_bpe")}


@pytest.mark.parametrize("family,marker", [("wordpiece", "##"), ("unigram", "▁"), ("byte_bpe", "Ġ")])
@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_whole_words_masked_together_for_each_tokenizer(tokenizers_by_family, family, marker, strategy):
    tokenizer = tokenizers_by_family[family]
    texts = sentences(n=48, seed=1)
    encoded = tokenizer(texts, padding=True, return_special_tokens_mask=True)
    input_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    special_mask = (np.asarray(encoded["special_tokens_mask"]) == 1) | (np.asarray(encoded["attention_mask"]) == 0)
    word_ids = [encoded.word_ids(row) for row in range(len(texts))]
    word_starts = np.stack([word_starts_from_word_ids(ids) for ids in word_ids])
    assert marker in "".join(tokenizer.convert_ids_to_tokens(input_ids[0]))  # the family we meant to build

    n_split_words = sum(ids.count(w) > 1 for ids in word_ids for w in set(ids) if w is not None)
    assert n_split_words > 20, "vocabulary too large: words must split into several sub-tokens"

    special_ids = tokenizer.all_special_ids
    for seed in range(5):
        masked, labels = mask_batch(input_ids, special_mask, word_starts, np.random.default_rng(seed),
                                    mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                    special_ids=special_ids, strategy=strategy, mlm_probability=0.3)
        chosen = labels != -100
        assert chosen.any() and not (chosen & special_mask).any()
        for row, ids in enumerate(word_ids):
            for word in {w for w in ids if w is not None}:
                word_chosen = chosen[row, [pos for pos, w in enumerate(ids) if w == word]]
                assert word_chosen.all() or not word_chosen.any(), f"{family} word {word} split in row {row}"


# --- token importance ---------------------------------------------------------------------------------------

def importance_docs(seed: int = 0, n_docs: int = 200):
    rng = np.random.default_rng(seed)
    targets = rng.normal(size=n_docs)
    high = targets > np.median(targets)
    docs = []
    for doc, is_high in enumerate(high):
        tokens = list(rng.integers(20, 50, size=15)) + [9]  # token 9 in every doc: says nothing
        if is_high:
            tokens.append(7)
        if doc in np.flatnonzero(high)[:2]:  # token 11: two very high docs, below min_count
            tokens.append(11)
        docs.append(tokens)
    return docs, targets, high


def test_token_importance_regression():
    docs, targets, _ = importance_docs()
    weights = token_importance(docs, targets[:, None], vocab_size=60, min_count=3, strength=2.0)
    assert weights.dtype == np.float32 and weights.shape == (60,)
    assert weights[7] > weights[9] * 1.5
    assert weights[11] == pytest.approx(weights.min()) and weights[9] == pytest.approx(weights.min(), rel=0.05)
    assert weights[55] == pytest.approx(weights.min())  # never seen
    occurrences = np.concatenate([np.asarray(doc) for doc in docs])
    assert weights[occurrences].mean() == pytest.approx(1.0, abs=1e-5)
    assert weights.max() / weights.min() <= 3.0 + 1e-5  # 1 + strength


def test_token_importance_classification_one_hot():
    docs, _, high = importance_docs(seed=1)
    classes = high.astype(int) + np.random.default_rng(2).integers(0, 2, size=len(docs)) * (~high)  # 0, 1 or 2
    one_hot = np.eye(3)[classes]
    weights = token_importance(docs, one_hot, vocab_size=60)
    assert np.isfinite(weights).all() and weights[7] > weights[9]
    occurrences = np.concatenate([np.asarray(doc) for doc in docs])
    assert weights[occurrences].mean() == pytest.approx(1.0, abs=1e-5)


def test_token_importance_constant_target_gives_uniform_weights():
    docs, _, _ = importance_docs()
    weights = token_importance(docs, np.ones((len(docs), 1)), vocab_size=60)
    np.testing.assert_allclose(weights, 1.0)


# --- argument validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,setting", [
    ({"mlm_probability": 1.5}, "mlm.mlm_probability"),
    ({"mlm_probability": 0.0}, "mlm.mlm_probability"),
    ({"mask_replace_prob": 0.95, "random_replace_prob": 0.1}, "mlm.mask_replace_prob + mlm.random_replace_prob"),
    ({"random_replace_prob": -0.1}, "mlm.random_replace_prob"),
    ({"mask_replace_prob": -0.1}, "mlm.mask_replace_prob"),
    ({"strategy": "ngram"}, "mlm.strategy"),
    ({"span_mean": 0.5, "strategy": "span"}, "mlm.span_mean"),
    ({"span_max": 0, "strategy": "span"}, "mlm.span_max"),
    ({"token_weights": np.ones((2, 3))}, "token_weights"),
    ({"token_weights": np.ones((4, 8)), "strategy": "span"}, "mlm.strategy"),
])
def test_invalid_settings_name_the_setting(kwargs, setting):
    input_ids, special_mask, word_starts = random_batch(batch=4, length=8)
    with pytest.raises(ValueError, match=setting.replace("+", r"\+")):
        run(input_ids, special_mask, word_starts, **kwargs)


def test_shape_mismatch_names_the_array():
    input_ids, special_mask, word_starts = random_batch(batch=4, length=8)
    with pytest.raises(ValueError, match="word_starts"):
        run(input_ids, special_mask, word_starts[:, :5])
    with pytest.raises(ValueError, match="mlm.min_count"):
        token_importance([[1, 2]], np.ones((1, 1)), vocab_size=5, min_count=-1)
