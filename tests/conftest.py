"""Shared fixtures: a tiny BERT built from a config, with a WordPiece vocabulary trained on the tests' own
text, saved as a local folder, so every test loads a real model offline and fast."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_encoder(out_dir: Path, texts: list[str], model_type: str = "bert", hidden: int = 32,
                       layers: int = 2) -> Path:
    """A randomly initialised encoder of `model_type` (bert, roberta, deberta-v2, electra) with a WordPiece
    vocabulary trained on `texts`, saved with its tokenizer as a local folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  model_max_length=128)
    shape = dict(vocab_size=wordpiece.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                 num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=130, pad_token_id=0)
    if model_type == "electra":
        shape["embedding_size"] = hidden
    if model_type == "deberta-v2":  # the DeBERTa-v3 layout: relative positions, no absolute embeddings
        shape.update(relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                     max_relative_positions=-1, type_vocab_size=0)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(model_type, **shape)).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def demo_texts() -> list[str]:
    from dontstop.demo import make_competition

    texts = []
    for task in ("regression", "multiclass"):
        frames = make_competition(task, n_train=200, n_test=0, n_pool=0, seed=123)
        texts += frames["train"]["text"].tolist() + frames["train"]["title"].tolist()
    return texts


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"), demo_texts())


TARGETS = {
    "regression": (["score"], "rmse"),
    "multi_target_regression": (["quality", "service", "value"], "mcrmse"),
    "binary": (["label"], "auc"),
    "multiclass": (["topic"], "logloss"),
    "multilabel": (["food", "price", "staff", "location"], "macro_f1"),
}


def write_competition(root: Path, task: str, n_train: int = 60, n_test: int = 12, seed: int = 0) -> Path:
    from dontstop.demo import write_demo

    return write_demo(root / "input" / task, task=task, n_train=n_train, n_test=n_test, n_pool=8, seed=seed)


def write_config(root: Path, name: str, task: str, backbone: Path, **sections) -> Path:
    """An experiment config for the tiny model on a demo competition under `root/input/<task>`."""
    targets, metric = TARGETS[task]
    data_dir = root / "input" / task
    cfg = {
        "competition": {"name": f"{task}_demo", "train": str(data_dir / "train.csv"),
                        "test": str(data_dir / "test.csv"),
                        "sample_submission": str(data_dir / "sample_submission.csv"),
                        "text_columns": ["text"], "target_columns": targets, "task": task, "metric": metric},
        "folds": {"n_folds": 3, "seed": 0, "file": str(root / "input" / "folds" / f"{task}.csv")},
        "model": {"backbone": str(backbone), "max_length": 64},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-3, "eval_batch_size": 16},
        "oof_dir": str(root / "oof"), "models_dir": str(root / "models"),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
