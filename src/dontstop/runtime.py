"""Process-level setup shared by the stages: the accelerate `Accelerator` and the run log.

One process by default; `accelerate launch` or `torchrun` turns the same code into data-parallel training
(the environment variables they set are what `Accelerator` reads), on GPUs or on CPU with gloo.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from dontstop.config import Config


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        if setting != "no" and not torch.cuda.is_available():
            return "no"  # autocast on CPU would only slow the tiny models down; fp32 is the CPU default
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    kwargs = {}
    _check_trackers(cfg.train.log_with)
    if cfg.train.log_with:
        kwargs.update(log_with=cfg.train.log_with, project_dir=str(cfg.oof_path / "trackers"))
    return Accelerator(
        # without a GPU, torchrun / accelerate launch processes must still join one gloo group
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
        gradient_accumulation_steps=cfg.train.grad_accum,
        # our batch sampler already fixes the order for a seed; accelerate must not reshuffle or re-seed it
        dataloader_config=DataLoaderConfiguration(even_batches=True, use_seedable_sampler=False),
        **kwargs,
    )


def _check_trackers(names: list[str]) -> None:
    """accelerate skips a tracker that is not installed with only a warning; a configured one must work."""
    from accelerate import utils

    for name in names:
        check = getattr(utils, f"is_{name}_available", None)
        if check is None:
            raise ValueError(f"train.log_with: unknown tracker {name!r} (e.g. tensorboard, wandb, mlflow)")
        if not check():
            raise ImportError(f"train.log_with lists {name!r} but it is not installed (pip install {name})")


def make_logger(path: Path, is_main: bool):
    """A `log(msg)` that prints to stderr (main process only) and appends to the run's log file."""
    logger = logging.getLogger(f"dontstop.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if is_main and not logger.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("[dontstop] %(message)s"))
        logger.addHandler(file_handler)
        logger.addHandler(stream)
    return logger.info


def make_adamw(groups: list[dict], lr: float, kind: str, device: torch.device, key: str) -> torch.optim.Optimizer:
    """AdamW for the fine-tuning and MLM stages: `adamw` is torch's fused kernel (CUDA and CPU: on CPU the
    default per-parameter loop took ~30 % of a MiniLM step, bench/finetune_throughput.py), `adamw_8bit` is
    bitsandbytes' 8-bit AdamW. `key` names the config key in the error when bitsandbytes is missing."""
    if kind == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError(f"{key}=adamw_8bit needs bitsandbytes (pip install bitsandbytes)") from err
        return bnb.optim.AdamW8bit(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, fused=device.type in ("cuda", "cpu"))
