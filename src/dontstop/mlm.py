"""Continued masked-LM pretraining on the competition's text (`dontstop mlm`): DAPT / TAPT.

Reads the competition's train / test texts (never its labels) and `mlm.extra` files. Writes
`models/mlm/<name>/`: a normal Hugging Face checkpoint (weights, config, tokenizer) that a fine-tuning
config names as `model.backbone`, `mlm_scores.json` (held-out perplexity before / after on the same masks,
masked-token accuracy) and `mlm_run.json` (corpus hash + settings: an identical rerun is skipped).
A `checkpoint/` folder, rewritten at every evaluation, lets a killed run resume where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dontstop.config import Config
from dontstop.corpus import TokenStream, collect_documents, corpus_hash, split_heldout, tokenize_documents
from dontstop.io import ensure_writable_dir, read_json, write_json
from dontstop.masking import mask_batch

EVAL_STREAM = 1_000_003  # rng stream id of the held-out masks: fixed, so before / after see the same masks


class SparseMaskedLM(nn.Module):
    """Runs the MLM head on masked positions only: the full-vocabulary logits of every position are never
    materialised (that tensor dominates MLM memory and time at 30k+ vocabularies)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.head = next((getattr(model, n) for n in ("cls", "lm_head", "lm_predictions") if hasattr(model, n)), None)

    def forward(self, input_ids, attention_mask, labels):
        chosen = labels != -100
        if self.head is None:  # an architecture whose head we do not know: the library's own path
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[chosen]
        else:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = self.head(hidden[chosen])
        targets = labels[chosen]
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        correct = (logits.argmax(-1) == targets).sum()
        return loss_sum, correct, chosen.sum()


def load_mlm_model(path: str, log=print):
    """AutoModelForMaskedLM; a backbone saved without an MLM head gets a fresh one, decoder tied to embeddings."""
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    base_prefix = model.base_model_prefix + "."
    head_missing = [k for k in info.get("missing_keys", []) if not k.startswith(base_prefix)]
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight.data_ptr() != inputs.weight.data_ptr():
        model.tie_weights()
    tied = output is not None and output.weight.data_ptr() == inputs.weight.data_ptr()
    if head_missing:
        log(f"mlm: {path} has no MLM head: initialised one ({len(head_missing)} tensors), "
            f"decoder {'tied to the input embeddings' if tied else 'NOT tied'}")
    else:
        log(f"mlm: kept the MLM head of {path}")
    return model, bool(head_missing)


def make_batch(stream: TokenStream, seq_ids, tokenizer, rng, m, special_ids, vocab_weights=None) -> dict:
    """[CLS] tokens [SEP] per sequence, padded to the batch's longest, masked afresh with `rng`; with
    `vocab_weights` (task-guided masking) a token's chance of being masked scales with its weight."""
    lengths = [int(stream.seq_bounds[i, 1] - stream.seq_bounds[i, 0]) + 2 for i in seq_ids]
    width = max(lengths)
    ids = np.full((len(seq_ids), width), tokenizer.pad_token_id, dtype=np.int64)
    special = np.ones((len(seq_ids), width), dtype=bool)
    starts = np.ones((len(seq_ids), width), dtype=bool)
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    for row, i in enumerate(seq_ids):
        a, b = stream.seq_bounds[i]
        n = b - a
        ids[row, 0], ids[row, n + 1] = cls, sep
        ids[row, 1:n + 1] = stream.tokens[a:b]
        special[row, 1:n + 1] = stream.special[a:b]
        starts[row, 1:n + 1] = stream.word_starts[a:b]
    masked, labels = mask_batch(ids, special, starts, rng, mask_token_id=tokenizer.mask_token_id,
                                vocab_size=len(tokenizer), special_ids=special_ids,
                                mlm_probability=m.mlm_probability, mask_replace_prob=m.mask_replace_prob,
                                random_replace_prob=m.random_replace_prob, strategy=m.masking,
                                span_mean=m.span_mean, span_max=m.span_max,
                                token_weights=None if vocab_weights is None else vocab_weights[ids])
    attention = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return {"input_ids": torch.from_numpy(masked), "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels)}


@torch.no_grad()
def evaluate(net, stream: TokenStream, tokenizer, m, special_ids, accelerator) -> dict:
    """Held-out loss / perplexity / accuracy over masked tokens, summed batch by batch (no logits kept)."""
    net = accelerator.unwrap_model(net)  # no DDP wrapper: processes may hold different numbers of batches
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    order = np.argsort(stream.seq_bounds[:, 1] - stream.seq_bounds[:, 0])
    batches = [order[i:i + m.eval_batch_size] for i in range(0, len(order), m.eval_batch_size)]
    for b, seq_ids in enumerate(batches[accelerator.process_index::accelerator.num_processes]):
        rng = np.random.default_rng([m.seed, EVAL_STREAM, b * accelerator.num_processes + accelerator.process_index])
        batch = {k: v.to(accelerator.device) for k, v in make_batch(stream, seq_ids, tokenizer, rng, m, special_ids).items()}
        with accelerator.autocast():
            loss_sum, correct, count = net(**batch)
        totals += torch.stack([loss_sum.double(), correct.double(), count.double()])
    totals = accelerator.reduce(totals, reduction="sum")
    net.train()
    loss = float(totals[0] / totals[2].clamp(min=1))
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": float(totals[1] / totals[2].clamp(min=1))}


def mlm_output_dir(cfg: Config) -> Path:
    return Path(cfg.models_dir) / "mlm" / (cfg.mlm.name or cfg.experiment)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def run_mlm(cfg: Config, force: bool = False) -> dict | list[dict]:
    """One MLM run; or, with task-guided masking (its token weights come from labels), one run per fold k whose
    weights are scored on the other folds' labels only, written to `<out>/fold<k>/` (leak-free by construction)."""
    from dontstop.models import resolve_backbone
    from dontstop.runtime import make_accelerator, make_logger

    out = mlm_output_dir(cfg)
    ensure_writable_dir(out.parent, "MLM output directory")
    accelerator = make_accelerator(cfg)
    log = make_logger(out.parent / f"{out.name}.log", accelerator.is_main_process)
    source = resolve_backbone(cfg.mlm.backbone or cfg.model.backbone)
    docs, repeats = collect_documents(cfg, log)
    if cfg.mlm.selective_strength <= 0:
        return _train_mlm(cfg, out, source, docs, repeats, force, accelerator, log)
    from transformers import AutoTokenizer

    from dontstop import data as D
    from dontstop.folds import read_fold_file
    from dontstop.masking import token_importance

    comp = D.load_competition(cfg.competition, log=log, need_test=False)
    fold_table, fold_hash = read_fold_file(cfg.fold_file, expected_ids=comp.train[cfg.competition.id_column])
    fold_of = fold_table.set_index("id")["fold"].reindex(comp.train[cfg.competition.id_column]).to_numpy()
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    texts = comp.train[cfg.competition.text_columns].astype(str).agg("\n".join, axis=1).tolist()
    token_ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    targets = D.target_matrix(comp)
    results = []
    for k in range(int(fold_of.max()) + 1):
        label_rows = np.flatnonzero(fold_of != k)  # the leak rule: fold k's labels never shape its masking
        weights = token_importance([token_ids[i] for i in label_rows], targets[label_rows], len(tokenizer),
                                   strength=cfg.mlm.selective_strength)
        label_folds = sorted(set(int(f) for f in fold_of[label_rows]))
        log(f"mlm fold {k}: task-guided masking from the labels of folds {label_folds}")
        results.append(_train_mlm(cfg, out / f"fold{k}", source, docs, repeats, force, accelerator, log,
                                  vocab_weights=weights, label_folds=label_folds, extra_hash=f"{fold_hash}:{k}"))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out)  # fine-tuning reads the tokenizer from the top folder
    return results


def _train_mlm(cfg: Config, out: Path, source: str, docs: list[str], repeats: list[int], force: bool, accelerator,
               log, vocab_weights: np.ndarray | None = None, label_folds: list[int] = (), extra_hash: str = "") -> dict:
    from transformers import AutoTokenizer

    from dontstop.models import enable_checkpointing
    from dontstop.runtime import make_adamw

    m = cfg.mlm
    ensure_writable_dir(out, "MLM output directory")
    settings = {k: v for k, v in cfg.to_dict()["mlm"].items() if k not in ("name", "eval_batch_size")}
    run_hash = hashlib.sha256(json.dumps({"corpus": corpus_hash(docs, repeats), "backbone": str(source),
                                          "settings": settings, "labels": extra_hash}, sort_keys=True).encode()).hexdigest()
    run_file = out / "mlm_run.json"
    if not force and run_file.is_file() and read_json(run_file).get("run_hash") == run_hash:
        log(f"mlm: {out} already holds this exact run (corpus + settings hash {run_hash[:12]}); skipped")
        return read_json(out / "mlm_scores.json")

    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"mlm.backbone: the tokenizer of {source} has no mask token; it cannot do masked-LM")
    from accelerate.utils import set_seed

    set_seed(m.seed)  # a fresh MLM head is randomly initialised: the seed must fix it
    model, head_initialised = load_mlm_model(source, log)
    positions = getattr(model.config, "max_position_embeddings", None)
    usable = positions - 2 if positions and model.config.model_type in ("roberta", "xlm-roberta", "camembert") else positions
    if usable and m.max_length > usable:
        raise ValueError(f"mlm.max_length={m.max_length} exceeds the {usable} positions of {source}")
    if m.gradient_checkpointing:
        enable_checkpointing(model)
    held = split_heldout(len(docs), m.holdout_fraction, m.seed)
    pick = lambda mask: [d for d, h in zip(docs, mask) if h]  # noqa: E731
    train_stream = tokenize_documents(pick(~held), [r for r, h in zip(repeats, held) if not h], tokenizer,
                                      m.max_length, m.packing, progress=accelerator.is_main_process)
    eval_stream = tokenize_documents(pick(held), [1] * int(held.sum()), tokenizer, m.max_length, m.packing) \
        if held.any() else None
    special_ids = sorted(set(tokenizer.all_special_ids))
    n_train = len(train_stream.seq_bounds)
    log(f"mlm: {len(docs)} documents ({int(held.sum())} held out), {len(train_stream.tokens)} training tokens in "
        f"{n_train} {m.packing} sequences of <= {m.max_length}, masking {m.masking} p={m.mlm_probability}")

    net = SparseMaskedLM(model)
    head_names = {n for n, _ in net.named_parameters() if not n.startswith(f"model.{model.base_model_prefix}.")}
    groups = [{"params": [p for n, p in net.named_parameters() if (n in head_names) == is_head and (p.ndim < 2) == no_wd],
               "weight_decay": 0.0 if no_wd else m.weight_decay, "is_head": is_head}
              for is_head in (True, False) for no_wd in (True, False)]
    groups = [g for g in groups if g["params"]]
    optimizer = make_adamw(groups, m.lr, m.optimizer, accelerator.device, key="mlm.optimizer")
    # every process takes the same number of micro-batches per epoch (DDP steps in lock-step)
    micro_per_epoch = max(1, len(_epoch_batches(train_stream, m, 0)) // accelerator.num_processes)
    steps_per_epoch = max(1, micro_per_epoch // m.grad_accum)
    total = max(1, int(math.ceil(steps_per_epoch * m.epochs)))
    body_start = min(m.head_warmup_steps, total - 1)  # the body waits while a fresh head learns
    warmup = int(m.warmup_ratio * (total - body_start))
    lambdas = [(lambda s, w=warmup: lr_factor(s, total, w, m.scheduler)) if g["is_head"] else
               (lambda s, w=warmup: 0.0 if s < body_start else lr_factor(s - body_start, total - body_start, w,
                                                                         m.scheduler)) for g in groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    net, optimizer = accelerator.prepare(net, optimizer)

    ckpt = out / "checkpoint"
    state = {"step": 0, "best_loss": None, "stale": 0, "history": [], "before": None, "wall_s": 0.0}
    if force:
        shutil.rmtree(ckpt, ignore_errors=True)
    if (ckpt / "state.json").is_file() and read_json(ckpt / "state.json").get("run_hash") == run_hash:
        state = _load_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler)
        log(f"mlm: resuming at step {state['step']}/{total} from {ckpt}")
    elif accelerator.is_main_process:
        shutil.rmtree(ckpt, ignore_errors=True)
    if state["before"] is None and eval_stream is not None:
        state["before"] = evaluate(net, eval_stream, tokenizer, m, special_ids, accelerator)
        log(f"mlm: held-out before: loss {state['before']['loss']:.4f}, perplexity {state['before']['perplexity']:.2f}")

    started = time.time() - state["wall_s"]
    bar = tqdm(total=total, initial=state["step"], desc="mlm", disable=not accelerator.is_local_main_process)
    trained_tokens, session_start = 0, time.time()  # this session's tokens / s, evaluations included
    net.train()
    epoch_cache: dict[int, list] = {}
    while state["step"] < total:
        step = state["step"]
        for micro in range(m.grad_accum):
            epoch, b = divmod(step * m.grad_accum + micro, micro_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache.clear()
                epoch_cache[epoch] = _epoch_batches(train_stream, m, epoch)[accelerator.process_index::accelerator.num_processes]
            rng = np.random.default_rng([m.seed, epoch, b, accelerator.process_index])
            torch.manual_seed(m.seed * 100_003 + step * 131 + micro)  # dropout fixed by the step: resume = rerun
            batch = {k: v.to(accelerator.device) for k, v in
                     make_batch(train_stream, epoch_cache[epoch][b], tokenizer, rng, m, special_ids,
                                vocab_weights).items()}
            with accelerator.autocast():
                loss_sum, _, count = net(**batch)
                loss = loss_sum / count.clamp(min=1) / m.grad_accum
            with accelerator.no_sync(net) if micro < m.grad_accum - 1 else contextlib.nullcontext():
                accelerator.backward(loss)
            trained_tokens += int(batch["attention_mask"].sum())
        if m.max_grad_norm > 0:
            accelerator.clip_grad_norm_(net.parameters(), m.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        bar.update(1)
        if eval_stream is not None and (state["step"] % m.eval_every == 0 or state["step"] == total):
            result = evaluate(net, eval_stream, tokenizer, m, special_ids, accelerator)
            state["history"].append({"step": state["step"], **result})
            bar.set_postfix(heldout_loss=f"{result['loss']:.4f}", ppl=f"{result['perplexity']:.2f}")
            if state["best_loss"] is None or result["loss"] < state["best_loss"]:
                state["best_loss"], state["stale"] = result["loss"], 0
                if accelerator.is_main_process:
                    _save_weights(accelerator.unwrap_model(net).model, out / "best.safetensors")
            else:
                state["stale"] += 1
            state["wall_s"] = time.time() - started
            if accelerator.is_main_process:
                _save_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler, {**state, "run_hash": run_hash})
            if m.early_stopping_patience and state["stale"] >= m.early_stopping_patience:
                log(f"mlm: early stop at step {state['step']}: held-out loss did not improve in {state['stale']} evaluations")
                break
    bar.close()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(net).model
    if (out / "best.safetensors").is_file():
        from safetensors.torch import load_file
        final.load_state_dict(load_file(str(out / "best.safetensors")), strict=False)
    after = evaluate(net, eval_stream, tokenizer, m, special_ids, accelerator) if eval_stream is not None else None
    wall = time.time() - started
    scores = {
        "perplexity_before": state["before"]["perplexity"] if state["before"] else None,
        "perplexity_after": after["perplexity"] if after else None,
        "masked_token_accuracy": after["accuracy"] if after else None,
        "masked_token_accuracy_before": state["before"]["accuracy"] if state["before"] else None,
        "loss_before": state["before"]["loss"] if state["before"] else None, "loss_after": after["loss"] if after else None,
        "head_initialised": head_initialised, "backbone": str(source), "steps": state["step"], "total_steps": total,
        "n_documents": len(docs), "n_heldout_documents": int(held.sum()), "n_train_tokens": int(len(train_stream.tokens)),
        "n_sequences": n_train, "wall_time_s": round(wall, 2),
        "train_tokens_per_s": round(trained_tokens / max(time.time() - session_start, 1e-9), 1), "history": state["history"],
        "corpus_hash": corpus_hash(docs, repeats), "run_hash": run_hash, "config": settings,
        # label provenance: folds whose labels shaped this checkpoint (task-guided masking); [] = none
        "label_folds": list(label_folds),
    }
    if accelerator.is_main_process:
        final.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_json(out / "mlm_scores.json", scores)
        write_json(run_file, {"run_hash": run_hash, "source": str(source)})  # last: marks the run finished
        (out / "best.safetensors").unlink(missing_ok=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    if after:
        log(f"mlm: held-out perplexity {scores['perplexity_before']:.2f} -> {scores['perplexity_after']:.2f}, "
            f"masked-token accuracy {scores['masked_token_accuracy']:.3f}; wrote {out} in {wall:.0f}s")
    return scores


def _epoch_batches(stream: TokenStream, m, epoch: int) -> list[list[int]]:
    from dontstop.data import LengthGroupedBatchSampler

    sampler = LengthGroupedBatchSampler(stream.seq_bounds[:, 1] - stream.seq_bounds[:, 0], m.batch_size, seed=m.seed)
    sampler.passes = epoch  # the order of epoch e depends only on (seed, e): a resumed run sees the same batches
    return list(sampler)


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    from dontstop.io import atomic_path

    # tied tensors share storage; safetensors wants one copy each
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _save_checkpoint(ckpt: Path, net, optimizer, scheduler, state: dict) -> None:
    """Write to a fresh folder, then swap it in: a kill mid-save leaves the previous checkpoint intact."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(net.model, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    write_json(tmp / "state.json", state)
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, net, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    net.model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    saved = torch.load(ckpt / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return read_json(ckpt / "state.json")
