"""Peak memory of one fine-tuning step for the DeBERTa-v3-large shape, in three modes:

  fp32_adamw     torch AdamW, fp32 master weights (dontstop's default `train.optimizer: adamw`)
  adamw8bit      bitsandbytes AdamW8bit (`train.optimizer: adamw_8bit`, through train.make_optimizer)
  adamw8bit_ckpt AdamW8bit + gradient checkpointing (models.enable_checkpointing, `model.gradient_checkpointing`)

    python bench/memory.py [--layers 24] [--length 1024] [--batch 4] [--steps 2] [--no-search]

The model is dontstop's `TextModel` (mean pooling, 6 regression outputs as in ELL) over a DebertaV2Model built
from the DeBERTa-v3-large config (24 layers, hidden 1024, 16 heads, FFN 4096, vocabulary 128,100, relative
attention, 256 position buckets, p2c + c2p) with random weights; the batch is random token ids at full length
(memory does not depend on the text). The step is train_fold's: autocast (bf16 on CUDA, fp32 on CPU), MSE,
backward, clipping at 1.0, optimizer step, zero_grad(set_to_none). Each mode runs in a fresh subprocess.

Peak: on CUDA torch.cuda.max_memory_allocated over the steps (weights, gradients, optimizer states and
activations). On CPU the peak resident memory over the steps (VmHWM, reset after the model is built) minus
the RSS after the imports, so it also holds the weights, as on CUDA; the growth over the RSS after building is
recorded too. CUDA also finds each mode's largest batch (doubling, then bisection, catching out-of-memory);
on CPU that search is skipped. Without a GPU the defaults shrink the shape to 4 layers at length 256.
ratio = fp32_adamw peak / adamw8bit_ckpt peak at the same batch; target 2.0 (8-bit + checkpointing at most
half). Writes bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import make_result, pick_device, precision, write_result

MODES = ("fp32_adamw", "adamw8bit", "adamw8bit_ckpt")
TARGET_RATIO = 2.0
GPU_SIZE = {"layers": 24, "length": 1024, "batch": 4}
CPU_SIZE = {"layers": 4, "length": 256, "batch": 8}
MAX_SEARCH_BATCH = 512


def deberta_v3_large(layers: int):
    from transformers import DebertaV2Config

    return DebertaV2Config(vocab_size=128100, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                           intermediate_size=4096, hidden_act="gelu", max_position_embeddings=512,
                           relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                           share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                           max_relative_positions=-1, layer_norm_eps=1e-7, type_vocab_size=0)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Meter:
    """Peak memory of a phase: CUDA allocator peak, or the process's peak RSS (reset at the phase's start)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peaks: dict[str, int] = {}
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM reset per phase"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif not reset_peak_rss():
            self.method = "ru_maxrss (peak of the whole process: clear_refs not permitted)"

    def stop(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = peak_rss_bytes()
        self.peaks[phase] = max(self.peaks.get(phase, 0), peak)


def child(mode: str, layers: int, length: int, batch: int, steps: int, search: bool) -> dict:
    """One mode, in this (fresh) process: build, then measure `steps` steps at `batch`, then search."""
    from transformers import AutoModel

    from dontstop.config import Config
    from dontstop.models import TextModel, enable_checkpointing
    from dontstop.runtime import make_accelerator
    from dontstop.train import compute_loss, make_optimizer

    device = pick_device()
    start_rss = rss_bytes()
    torch.manual_seed(0)
    cfg = Config()
    cfg.train.optimizer = "adamw" if mode == "fp32_adamw" else "adamw_8bit"
    cfg.model.gradient_checkpointing = mode.endswith("ckpt")
    cfg.train.mixed_precision = "auto"
    backbone = AutoModel.from_config(deberta_v3_large(layers))
    model = TextModel(backbone, cfg.model, n_outputs=6)
    if cfg.model.gradient_checkpointing:  # what build_model does for model.gradient_checkpointing: true
        enable_checkpointing(backbone)
    accelerator = make_accelerator(cfg)
    model = model.to(device).train()
    optimizer = make_optimizer(cfg, model, device)
    n_params = sum(p.numel() for p in model.parameters())
    built_rss = rss_bytes()
    meter = Meter(device)

    def step(size: int) -> None:
        """train_fold's step, with the memory peak of forward + backward and of the optimizer phase apart."""
        ids = torch.randint(1000, 128000, (size, length), device=device)
        mask = torch.ones_like(ids)
        targets = torch.randn(size, 6, device=device)
        meter.start()
        with accelerator.autocast():
            logits = model(ids, mask)
        loss = compute_loss("mse", logits, targets, None)
        accelerator.backward(loss)
        meter.stop("forward_backward")
        meter.start()
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.stop("optimizer")

    out = {"mode": mode, "batch": batch, "params": n_params, "optimizer": type(optimizer).__name__,
           "gradient_checkpointing": cfg.model.gradient_checkpointing}
    started = time.perf_counter()
    try:
        for _ in range(steps):
            step(batch)
    except torch.cuda.OutOfMemoryError:
        out["oom"] = True
    out["step_s"] = round((time.perf_counter() - started) / steps, 2)
    if not out.get("oom"):
        base = 0 if device.type == "cuda" else start_rss  # CUDA counts only tensors; a process also holds libraries
        out["peak_bytes"] = max(meter.peaks.values()) - base
        out["phase_peak_bytes"] = {phase: peak - base for phase, peak in meter.peaks.items()}
        if device.type == "cpu":
            out.update(rss_after_imports=start_rss, rss_after_build=built_rss,
                       step_growth_bytes=max(meter.peaks.values()) - built_rss, peak_method=meter.method)
    if device.type == "cuda" and search:
        out["max_batch"] = largest_batch(step, optimizer)
    state_bytes = 0
    for state in optimizer.state.values():
        state_bytes += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    out["optimizer_state_bytes"] = state_bytes
    out["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return out


def largest_batch(step, optimizer) -> int:
    """Double until a step runs out of memory, then bisect between the last fit and the first failure."""
    def fits(size: int) -> bool:
        try:
            step(size)
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            return False
        finally:
            gc.collect()
            torch.cuda.empty_cache()

    low, high = 0, 1
    while high <= MAX_SEARCH_BATCH and fits(high):
        low, high = high, high * 2
    if high > MAX_SEARCH_BATCH:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def run_mode(mode: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--layers", str(args.layers),
           "--length", str(args.length), "--batch", str(args.batch), "--steps", str(args.steps)]
    if not args.search:
        cmd.append("--no-search")
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    device = pick_device()
    size = GPU_SIZE if device.type == "cuda" else CPU_SIZE
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=size["layers"])
    parser.add_argument("--length", type=int, default=size["length"])
    parser.add_argument("--batch", type=int, default=size["batch"])
    parser.add_argument("--steps", type=int, default=2, help="steps measured (the first one creates the states)")
    parser.add_argument("--no-search", dest="search", action="store_false", help="skip the largest-batch search")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if device.type != "cuda":
        args.search = False  # a CPU has no hard memory wall to search for; the host would swap or be killed
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.length, args.batch, args.steps, args.search)))
        return 0

    runs = {mode: run_mode(mode, args) for mode in MODES}
    while device.type == "cuda" and runs["fp32_adamw"].get("oom") and args.batch > 1:
        args.batch //= 2  # the comparison needs a batch at which fp32 AdamW fits
        runs = {mode: run_mode(mode, args) for mode in MODES}
    fp32, best = runs["fp32_adamw"], runs["adamw8bit_ckpt"]
    gib = 2 ** 30
    fb = "forward_backward"
    result = make_result(
        "memory", "peak memory of one fine-tuning step (GiB); ours = AdamW8bit + gradient checkpointing, "
        "baseline = fp32 torch AdamW, ratio = baseline / ours (larger is better)",
        round(best["peak_bytes"] / gib, 3), round(fp32["peak_bytes"] / gib, 3), TARGET_RATIO, __file__, argv, device,
        ratio=fp32["peak_bytes"] / best["peak_bytes"],
        # the same ratio without the optimizer phase, whose temporaries depend on the backend (see the doc)
        ratio_forward_backward=round(fp32["phase_peak_bytes"][fb] / best["phase_peak_bytes"][fb], 3),
        peak_gib={mode: round(r["peak_bytes"] / gib, 3) for mode, r in runs.items()},
        max_batch={mode: r.get("max_batch") for mode, r in runs.items()} if args.search else None,
        max_batch_note=None if args.search else "largest-batch search runs on CUDA only (no memory wall on a CPU host)",
        measure="torch.cuda.max_memory_allocated" if device.type == "cuda" else
        "peak RSS per phase (VmHWM reset at the phase start) minus the RSS after imports: weights included",
        shape={"model": "DeBERTa-v3-large config, random weights", "layers": args.layers, "length": args.length,
               "batch": args.batch, "hidden": 1024, "heads": 16, "intermediate": 4096, "vocab": 128100},
        steps=args.steps, precision=precision(device), runs=runs)
    out = write_result(result)
    print(f"DeBERTa-v3-large shape, {args.layers} layers, batch {args.batch} x {args.length}, {precision(device)}")
    print(f"{'mode':16}{'peak GiB':>10}{'fwd+bwd GiB':>13}{'optimizer GiB':>15}{'opt. state GiB':>16}"
          f"{'step s':>8}{'max batch':>11}")
    for mode, r in runs.items():
        phases = r["phase_peak_bytes"]
        print(f"{mode:16}{r['peak_bytes'] / gib:10.3f}{phases[fb] / gib:13.3f}{phases['optimizer'] / gib:15.3f}"
              f"{r['optimizer_state_bytes'] / gib:16.3f}{r['step_s']:8.1f}{str(r.get('max_batch', '-')):>11}")
    print(f"fp32 / (8-bit + checkpointing) = {result['ratio']:.2f}x whole step, "
          f"{result['ratio_forward_backward']:.2f}x forward + backward (target {TARGET_RATIO}x: "
          f"{'met' if result['met'] else 'MISSED'}) on {result['device']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
