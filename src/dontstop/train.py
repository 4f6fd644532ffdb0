"""K-fold fine-tuning (`dontstop train`): for each fold k, train on the other folds, keep the best
checkpoint by the competition metric on fold k, and predict fold k (OOF) and the test set.

Reads the config, the competition files and the fold file. Writes, per fold, `models/<exp>/fold<k>/`
(weights + tokenizer + head.json) and `oof/<exp>/{oof_fold<k>,test_fold<k>}.csv` + `fold<k>.json` (the
record: scores per evaluation, wall time, which folds' labels trained it), written last so a fold counts
as finished only when everything is on disk. When every fold is finished it assembles `oof.csv`,
`test.csv`, `submission.csv` and `scores.json`.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dontstop import data as D
from dontstop.config import Config, dump_config
from dontstop.folds import read_fold_file
from dontstop.io import ensure_writable_dir, read_json, write_csv, write_json, write_text
from dontstop.metrics import get_metric, score
from dontstop.leak import fold_backbone, parse_label_folds
from dontstop.models import build_model, load_tokenizer, parameter_groups, resolve_backbone, save_fold_model
from dontstop.predict import make_loader, predict_raw, predictions_frame, to_predictions
from dontstop.pseudo import pseudo_rows
from dontstop.report import assemble_outputs
from dontstop.runtime import make_accelerator, make_adamw, make_logger

# keys that change nothing in the results, so changing them does not invalidate finished folds
_RESULT_NEUTRAL = {"stages", "train.num_workers", "train.log_with", "train.eval_batch_size"}
# sections other stages read: the MLM result reaches training only through model.backbone; package only ships
_RESULT_NEUTRAL_SECTIONS = ("mlm.", "ensemble.", "package.")


def run_train(cfg: Config, folds: list[int] | None = None, force: bool = False) -> dict | None:
    ensure_writable_dir(cfg.oof_path, "output directory (oof_dir)")
    ensure_writable_dir(cfg.models_path, "model directory (models_dir)")
    accelerator = make_accelerator(cfg)
    log = make_logger(cfg.oof_path / "train.log", accelerator.is_main_process)
    comp = D.load_competition(cfg.competition, log=log)
    fold_table, fold_hash = read_fold_file(cfg.fold_file, expected_ids=comp.train[cfg.competition.id_column])
    fold_of = fold_table.set_index("id")["fold"].reindex(comp.train[cfg.competition.id_column]).to_numpy()
    n_folds = int(fold_of.max()) + 1
    todo = list(range(n_folds)) if folds is None else folds
    for k in todo:
        if not 0 <= k < n_folds:
            raise ValueError(f"--fold {k}: the fold file {cfg.fold_file} has folds 0..{n_folds - 1}")
    if accelerator.is_main_process:
        _guard_output_dir(cfg, force, todo)
    accelerator.wait_for_everyone()
    if cfg.train.log_with:
        # trackers take scalar hyper-parameters only (tensorboard's hparams refuse lists and None)
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(cfg.to_dict()).items()}
        accelerator.init_trackers(cfg.experiment, config=hparams)

    tokenizer = load_tokenizer(cfg.model.backbone)
    encodings = D.tokenize(comp, comp.train, tokenizer, cfg.model.max_length)
    test_encodings = D.tokenize(comp, comp.test, tokenizer, cfg.model.max_length) if comp.test is not None else None
    targets = D.target_matrix(comp)
    log(f"experiment {cfg.experiment}: {len(comp.train)} train rows, "
        f"{0 if comp.test is None else len(comp.test)} test rows, {n_folds} folds, task {cfg.competition.task}, "
        f"metric {cfg.competition.metric}, device {accelerator.device}, processes {accelerator.num_processes}, "
        f"mixed precision {accelerator.mixed_precision}")
    for k in todo:
        if _fold_done(cfg, k, fold_hash):
            log(f"fold {k}: finished earlier, skipped (use --force to retrain)")
            continue
        if (cfg.oof_path / f"fold{k}.json").is_file():
            log(f"fold {k}: its results were made on another fold file or are incomplete; retraining")
        train_fold(cfg, comp, k, fold_of, encodings, test_encodings, targets, tokenizer, accelerator, log,
                   fold_hash)
    if cfg.train.log_with:
        accelerator.end_training()
    missing = [k for k in range(n_folds) if not _fold_done(cfg, k, fold_hash)]
    if missing:
        log(f"folds {missing} are not finished yet: oof.csv and scores.json are written once they are")
        return None
    if not accelerator.is_main_process:
        return None
    scores = assemble_outputs(cfg, comp, fold_of, fold_hash, log)
    return scores


def _fold_done(cfg: Config, k: int, fold_hash: str) -> bool:
    """Finished = its record (written last) and weights exist, made on the current fold file."""
    record = cfg.oof_path / f"fold{k}.json"
    if not record.is_file() or not (cfg.models_path / f"fold{k}" / "model.safetensors").is_file():
        return False
    return read_json(record).get("fold_file_hash") == fold_hash


def _comparable(cfg_dict: dict) -> dict:
    flat = _flat(cfg_dict)
    return {k: v for k, v in flat.items() if k not in _RESULT_NEUTRAL and k != "experiment"
            and not k.startswith(_RESULT_NEUTRAL_SECTIONS)}


def _changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose value differs; a key the saved config predates counts only if set away from its default."""
    defaults = _flat(Config().to_dict())
    return sorted(k for k in set(old) | set(new)
                  if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)))


def _guard_output_dir(cfg: Config, force: bool, todo: list[int]) -> None:
    """Refuse to mix results of two different configs in one output folder, unless --force."""
    import yaml

    saved = cfg.oof_path / "config.yaml"
    if saved.is_file():
        old = _comparable(yaml.safe_load(saved.read_text()) or {})
        new = _comparable(cfg.to_dict())
        changed = _changed_keys(old, new)
        if changed and not force:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
            raise FileExistsError(f"{cfg.oof_path} holds results of a different config ({shown}); rerun with "
                                  f"--force to replace them, or copy the config under a new experiment name")
        if changed:  # --force with a new config: nothing old may survive
            todo = list(range(1000))
    if force:
        for k in todo:
            for path in (cfg.oof_path / f"fold{k}.json", cfg.oof_path / f"oof_fold{k}.csv",
                         cfg.oof_path / f"test_fold{k}.csv"):
                path.unlink(missing_ok=True)
            shutil.rmtree(cfg.models_path / f"fold{k}", ignore_errors=True)
        for name in ("oof.csv", "test.csv", "scores.json", "submission.csv"):
            (cfg.oof_path / name).unlink(missing_ok=True)
    write_text(saved, dump_config(cfg))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_loss(task: str, loss: str) -> str:
    fits = {"mse": ("regression", "multi_target_regression"), "smooth_l1": ("regression", "multi_target_regression"),
            "bce": ("binary", "multilabel"), "ce": ("multiclass",)}
    if loss == "auto":
        return {"multiclass": "ce", "binary": "bce", "multilabel": "bce"}.get(task, "mse")
    if task not in fits[loss]:
        raise ValueError(f"train.loss={loss!r} does not fit task {task!r} (it fits {', '.join(fits[loss])})")
    return loss


def compute_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss, weighted mean. Targets may be soft (probabilities) for every classification loss."""
    logits = logits.float()
    if kind == "ce":
        per_sample = F.cross_entropy(logits, targets, reduction="none")
    elif kind == "bce":
        per_sample = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    elif kind == "smooth_l1":
        per_sample = F.smooth_l1_loss(logits, targets, reduction="none").mean(1)
    else:
        per_sample = F.mse_loss(logits, targets, reduction="none").mean(1)
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight).sum() / weight.sum().clamp(min=1e-8)


def make_optimizer(cfg: Config, model, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    groups = parameter_groups(model, t.lr, t.head_lr, t.layerwise_lr_decay, t.weight_decay)
    return make_adamw(groups, t.lr, t.optimizer, device, key="train.optimizer")


def make_scheduler(cfg: Config, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.train.scheduler, cfg.train.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def train_fold(cfg: Config, comp: D.Competition, k: int, fold_of: np.ndarray, encodings, test_encodings,
               targets: np.ndarray, tokenizer, accelerator, log, fold_hash: str) -> None:
    from accelerate.utils import set_seed
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    started = time.time()
    t, task = cfg.train, cfg.competition.task
    fold_dir = cfg.models_path / f"fold{k}"
    if accelerator.is_main_process:  # a fold killed mid-way restarts from scratch, cleanly
        shutil.rmtree(fold_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    set_seed(t.seed + k)
    train_idx, valid_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    _check_fold_classes(comp, targets, train_idx, valid_idx, k)
    loss_kind = resolve_loss(task, t.loss)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    multiple_of = 8 if accelerator.device.type == "cuda" else 1
    train_set, phase1_set, mean, std, label_folds = training_rows(cfg, comp, k, train_idx, fold_of, encodings,
                                                                  targets, tokenizer, log)
    valid_set = D.TextDataset([encodings[i] for i in valid_idx])
    train_loader = make_loader(train_set, t.batch_size, pad_id, shuffle=True, seed=t.seed + k,
                               multiple_of=multiple_of, num_workers=t.num_workers)
    valid_loader = make_loader(valid_set, t.eval_batch_size, pad_id, shuffle=False, multiple_of=multiple_of)

    backbone = fold_backbone(resolve_backbone(cfg.model.backbone), k)  # per-fold MLM checkpoints, leak-checked
    model = build_model(dataclasses.replace(cfg.model, backbone=backbone), n_outputs=targets.shape[1], log=log)
    if phase1_set is not None:
        _train_phase1(cfg, model, phase1_set, loss_kind, pad_id, multiple_of, accelerator, k, log)
    optimizer = make_optimizer(cfg, model, accelerator.device)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / t.batch_size / accelerator.num_processes) / t.grad_accum)
    total_steps = max(1, int(math.ceil(steps_per_epoch * t.epochs)))
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    model, optimizer, train_loader, valid_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, scheduler)
    if t.compile:
        model = torch.compile(model)
    raw_model = accelerator.unwrap_model(model)
    ema = AveragedModel(raw_model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True) \
        if t.ema_decay > 0 else None
    eval_every = steps_per_epoch if t.eval_every == "epoch" else int(t.eval_every)
    metric = get_metric(cfg.competition.metric, task)
    y_valid = D.metric_targets(comp, comp.train.iloc[valid_idx])

    def evaluate(net) -> tuple[float, np.ndarray]:
        preds = to_predictions(predict_raw(net, valid_loader, accelerator, len(valid_set)), task, mean, std)
        return score(metric.name, task, y_valid, D.metric_predictions(comp, preds)), preds

    head_info = {"task": task, "n_outputs": int(targets.shape[1]), "output_names": comp.output_names,
                 "target_mean": None if mean is None else mean.tolist(),
                 "target_std": None if std is None else std.tolist(), "model": cfg.model.__dict__,
                 "fold": k, "trained_on_folds": sorted(label_folds),
                 "fold_file_hash": fold_hash, "experiment": cfg.experiment}
    best = {"score": None, "step": 0, "preds": None}
    history, recent_states = [], collections.deque(maxlen=max(t.swa_last, 1))
    stale, step, running_loss = 0, 0, None
    bar = tqdm(total=total_steps, desc=f"fold {k}", disable=not accelerator.is_local_main_process, leave=False)
    model.train()
    stop = False
    while step < total_steps and not stop:
        for batch in train_loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                loss = compute_loss(loss_kind, logits, batch["targets"], batch.get("weight"))
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.update_parameters(raw_model)
            # a detached running mean on device: no host sync per step
            running_loss = loss.detach() if running_loss is None else 0.9 * running_loss + 0.1 * loss.detach()
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                net = ema.module if ema is not None else model
                value, preds = evaluate(net)
                improved = best["score"] is None or (value > best["score"] if metric.greater_is_better
                                                     else value < best["score"])
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "score": value,
                                "train_loss": float(running_loss), "elapsed_s": round(time.time() - started, 2)})
                if t.swa_last:
                    recent_states.append({n: p.detach().to("cpu", copy=True)
                                          for n, p in accelerator.unwrap_model(net).state_dict().items()})
                if improved:
                    best.update(score=value, step=step, preds=preds)
                    stale = 0
                    if accelerator.is_main_process and not t.swa_last:
                        save_fold_model(accelerator.unwrap_model(net), tokenizer, fold_dir, head_info)
                else:
                    stale += 1
                bar.set_postfix(loss=f"{float(running_loss):.4f}", valid=f"{value:.4f}",
                                best=f"{best['score']:.4f}")
                accelerator.log({f"fold{k}/valid_{metric.name}": value, f"fold{k}/train_loss": float(running_loss)},
                                step=step)
                if t.early_stopping_patience and stale >= t.early_stopping_patience:
                    log(f"fold {k}: early stop at step {step}, no improvement in {stale} evaluations")
                    stop = True
                    break
            if step >= total_steps:
                break
    bar.close()
    final_model = accelerator.unwrap_model(ema.module if ema is not None else model)
    if t.swa_last:  # the average of the last N evaluated weights, not a pick by validation score
        averaged = {n: torch.stack([s[n].float() for s in recent_states]).mean(0).to(recent_states[-1][n].dtype)
                    for n in recent_states[-1]}
        final_model.load_state_dict(averaged)
        value, preds = evaluate(final_model)
        best.update(score=value, step=step, preds=preds)
        history.append({"step": step, "swa_of_last": len(recent_states), "score": value})
        if accelerator.is_main_process:
            save_fold_model(final_model, tokenizer, fold_dir, head_info)
    else:
        accelerator.wait_for_everyone()
        from safetensors.torch import load_file
        final_model.load_state_dict(load_file(str(fold_dir / "model.safetensors")))

    ids = comp.train[cfg.competition.id_column].to_numpy()
    if accelerator.is_main_process:
        oof_frame = predictions_frame(ids[valid_idx], best["preds"], comp.pred_columns, cfg.competition.id_column)
        oof_frame.insert(1, "fold", k)
        write_csv(cfg.oof_path / f"oof_fold{k}.csv", oof_frame)
    if test_encodings is not None:
        test_set = D.TextDataset(test_encodings)
        test_loader = accelerator.prepare(make_loader(test_set, t.eval_batch_size, pad_id, shuffle=False,
                                                      multiple_of=multiple_of))
        test_preds = to_predictions(predict_raw(final_model, test_loader, accelerator, len(test_set)), task, mean, std)
        if accelerator.is_main_process:
            write_csv(cfg.oof_path / f"test_fold{k}.csv", predictions_frame(
                comp.test[cfg.competition.id_column], test_preds, comp.pred_columns, cfg.competition.id_column))
    baseline = _constant_score(comp, targets, train_idx, valid_idx, metric.name)
    wall = time.time() - started
    if accelerator.is_main_process:
        write_json(cfg.oof_path / f"fold{k}.json", {
            "fold": k, "score": best["score"], "best_step": best["step"], "baseline_score": baseline,
            "total_steps": total_steps, "n_train": len(train_idx), "n_valid": len(valid_idx),
            "trained_on_folds": head_info["trained_on_folds"], "wall_time_s": round(wall, 2),
            "history": history, "fold_file_hash": fold_hash})
    log(f"fold {k}: {metric.name} {best['score']:.5f} (best at step {best['step']}/{total_steps}; constant "
        f"prediction {baseline:.5f}) in {wall:.1f}s")
    accelerator.free_memory()
    del model, optimizer, scheduler, ema
    accelerator.wait_for_everyone()


def training_rows(cfg: Config, comp: D.Competition, k: int, train_idx, fold_of, encodings, targets, tokenizer, log):
    """Fold k's training set: its rows' hard labels (mixed with teacher-fold-k soft labels when distilling) and
    pseudo-labelled pool rows (joined, or kept apart for phase 1 of the two-phase schedule). Every soft / pseudo
    input has its label provenance checked against fold k first. Returns (train_set, phase1_set or None,
    target mean, target std, the set of folds whose labels went in)."""
    from dontstop.distill import soft_targets

    task, t = comp.spec.task, cfg.train
    label_folds = set(int(f) for f in fold_of[train_idx])
    train_targets = targets[train_idx]
    mean = std = None
    if task in ("regression", "multi_target_regression") and t.standardize_targets:
        mean, std = train_targets.mean(0), train_targets.std(0) + 1e-6  # the training folds' real labels only
    distilled = soft_targets(cfg, comp, k, comp.train[comp.spec.id_column].to_numpy()[train_idx])
    if distilled is not None:
        alpha = cfg.distill.alpha
        train_targets = alpha * train_targets + (1 - alpha) * distilled[0]
        label_folds |= set(distilled[1])
        log(f"fold {k}: targets = {alpha:g} * hard + {1 - alpha:g} * soft labels of {cfg.distill.teacher}/fold{k}")
    scale = (lambda y: (y - mean) / std) if mean is not None else (lambda y: y)  # noqa: E731
    train_encodings, weights = [encodings[i] for i in train_idx], None
    train_targets, phase1_set = scale(train_targets), None
    extra = pseudo_rows(cfg, comp, k)  # leak-checked: none of them may come from fold k's labels
    if extra is not None and len(extra):
        extra_targets = scale(extra[[f"pseudo_{name}" for name in comp.output_names]].to_numpy(np.float32))
        extra_encodings = D.tokenize(comp, extra, tokenizer, cfg.model.max_length)
        extra_weights = extra["weight"].to_numpy(np.float32)
        label_folds |= {f for cell in extra["label_folds"].unique() for f in parse_label_folds(cell)}
        if cfg.pseudo.schedule == "two_phase":
            phase1_set = D.TextDataset(extra_encodings, extra_targets.astype(np.float32), extra_weights)
        else:
            train_encodings += extra_encodings
            train_targets = np.concatenate([train_targets, extra_targets])
            weights = np.concatenate([np.ones(len(train_idx), np.float32), extra_weights])
        log(f"fold {k}: + {len(extra)} pseudo-labelled rows ({cfg.pseudo.schedule}, weight {extra_weights[0]:g})")
    return (D.TextDataset(train_encodings, train_targets.astype(np.float32), weights), phase1_set, mean, std,
            label_folds)


def _train_phase1(cfg: Config, model, dataset, loss_kind, pad_id, multiple_of, accelerator, k, log) -> None:
    """Two-phase pseudo-labelling (the Feedback Prize ELL winners' scheme): first fit the pseudo rows alone,
    then the caller fine-tunes on the real rows with a fresh optimizer and schedule."""
    t = cfg.train
    loader = make_loader(dataset, t.batch_size, pad_id, shuffle=True, seed=t.seed + 1000 + k, multiple_of=multiple_of)
    optimizer = make_optimizer(cfg, model, accelerator.device)
    steps = max(1, int(math.ceil(len(loader) * cfg.pseudo.phase1_epochs)))
    scheduler = make_scheduler(cfg, optimizer, steps)
    net, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    net.train()
    done = 0
    while done < steps:
        for batch in loader:
            with accelerator.autocast():
                logits = net(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            accelerator.backward(compute_loss(loss_kind, logits, batch["targets"], batch.get("weight")))
            if t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(net.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done >= steps:
                break
    log(f"fold {k}: phase 1 done, {steps} steps on {len(dataset)} pseudo-labelled rows")
    accelerator.free_memory()


def _constant_score(comp, targets, train_idx, valid_idx, metric_name) -> float:
    from dontstop.metrics import constant_prediction

    task = comp.spec.task
    y_train = D.metric_targets(comp, comp.train.iloc[train_idx])
    const = constant_prediction(task, y_train, len(valid_idx), n_classes=len(comp.classes) if comp.classes else None)
    return score(metric_name, task, D.metric_targets(comp, comp.train.iloc[valid_idx]), const)


def _check_fold_classes(comp, targets, train_idx, valid_idx, k) -> None:
    """Every class must be seen in training; a class absent from the training folds cannot be learnt."""
    if comp.spec.task not in D.CLASSIFICATION:
        return
    names = comp.output_names if comp.spec.task != "binary" else ["0", "1"]
    counts = targets[train_idx].sum(0) if comp.spec.task != "binary" else np.array(
        [(targets[train_idx, 0] == 0).sum(), (targets[train_idx, 0] == 1).sum()])
    unseen = [names[i] for i in np.flatnonzero(counts == 0)]
    if unseen:
        raise D.DataError(f"fold {k}: class(es) {unseen} never appear in the training folds of {comp.spec.train}; "
                          f"the fold file cannot be used with these targets")
