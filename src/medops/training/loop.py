"""One training run: whole splits on the device, batched augmentation, early stopping,
best-validation checkpoint, resume after interruption, AMP on CUDA. Same code on CPU and GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from medmnist.evaluator import getACC
from torch import nn
from tqdm.auto import tqdm

from medops.training.augment import augment
from medops.training.averaging import WeightAverage
from medops.training.batches import Normalizer, SplitTensors, batches, load_tensors
from medops.training.budget import AUTO, resolve_budget, resolve_width
from medops.training.checkpoint import load_checkpoint, save_checkpoint
from medops.training.layout import channels_last_format, use_channels_last
from medops.training.precision import training_autocast
from medops.config import TrainParams
from medops.data.processed import ProcessedMeta, data_id, read_meta
from medops.errors import ConfigError, MedopsError
from medops.memory import keep_freed_memory
from medops.training.scoring import EpochSelector, predict_scores, quick_metrics, windowed
from medops.training.models import ARCHITECTURES, InputSpec, build_model
from medops.task_rules import PRIOR_STRENGTHS, choose_prior_strength, logit_offset, loss_function

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"


class TrainingDiverged(MedopsError):
    """The loss became NaN or infinite; the best checkpoint so far is kept."""


@dataclass
class TrainResult:
    checkpoint: Path  # best-validation weights
    best_epoch: int  # the kept epoch (train.select: the latest within one standard error of the peak, or the peak)
    best_score: float  # the monitored validation value at best_epoch (its mean over monitor_window epochs)
    history: list[dict]
    stopped_early: bool
    resumed_from: int | None
    device: str
    seconds: float
    epochs: int  # the budget trained with (`auto` resolved)
    patience: int
    layout: str  # what `channels_last` resolved to on this host: channels-last | default
    precision: str  # what `amp` resolved to: bf16 | fp16 | fp32


PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def input_spec(meta: ProcessedMeta) -> InputSpec:
    return InputSpec(n_channels=meta.n_channels, n_classes=meta.n_classes, size=meta.size, is_3d=meta.is_3d)


def model_options(cfg: TrainParams, is_3d: bool) -> dict:
    """What build_model needs besides the data to rebuild this architecture."""
    options = {"dropout": cfg.dropout}
    if ARCHITECTURES[cfg.arch].scalable:
        options["width"] = resolve_width(cfg.width, is_3d)
    if ARCHITECTURES[cfg.arch].transfer:
        # trained weights live in the checkpoint: never fetch pretrained ones again to rebuild
        options.update(weights="none", finetune=cfg.transfer.finetune, resize_to=cfg.transfer.resize_to)
    return options


def _optimizer(params, cfg: TrainParams) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt, cfg: TrainParams):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fingerprint(cfg: TrainParams, meta: ProcessedMeta) -> str:
    """Identifies a run: a checkpoint is resumed only by a run with the same recipe and data."""
    recipe = cfg.model_dump(exclude={"resume", "device", "eval_batch_size", "channels_last"})  # speed, not recipe
    recipe["width"] = resolve_width(cfg.width, meta.is_3d)  # `auto` or the number it means: the same run
    if recipe["width"] == 1.0:  # every run before train.width existed trained at 1: keep resuming them
        del recipe["width"]
    blob = json.dumps({"recipe": recipe, "data": data_id(meta)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prior_correction(cfg: TrainParams, meta: ProcessedMeta) -> list[float] | None:
    """The logit offset that undoes the class weights of the loss (None: not weighted, or not asked)."""
    return logit_offset(meta.class_weights) if cfg.weighted_loss and cfg.logit_adjust else None


def _set_prior_strength(best: Path, model: nn.Module, val: SplitTensors, norm: Normalizer, task: str,
                        full: torch.Tensor, batch_size: int) -> None:
    """Choose on validation how much of the class-weight tilt the best checkpoint's predictions
    undo (task_rules.choose_prior_strength) and record it as the checkpoint's logit offset.
    Recomputed from the full offset each time, so a resumed run chooses the same way."""
    state = load_checkpoint(best, map_location=full.device)
    model.load_state_dict(state["model"])
    scores = {s: predict_scores(model, val, norm, task, batch_size, offset=full * s)[0] for s in PRIOR_STRENGTHS}
    strength = choose_prior_strength(val.y.cpu().numpy(), scores, task)
    state.update(logit_offset=(full * strength).tolist(), prior_strength=strength)
    save_checkpoint(best, state)
    log.info("prior correction: %.1f of the class-weight tilt undone (validation ACC %s)", strength,
             ", ".join(f"{s:.1f}: {float(getACC(val.y.cpu().numpy(), v, task)):.4f}" for s, v in scores.items()))


def _loss(cfg: TrainParams, meta: ProcessedMeta, device: torch.device) -> nn.Module:
    """The task's training loss, class-weighted when the recipe asks for it."""
    weights = torch.tensor(meta.class_weights, dtype=torch.float32, device=device) if cfg.weighted_loss else None
    return loss_function(meta.task, weights, cfg.ordinal_smoothing)


def _speed_choices(cfg: TrainParams, model: nn.Module, train_data: SplitTensors, norm: Normalizer,
                   loss_fn: nn.Module) -> tuple[bool, torch.dtype | None]:
    """Whether to train channels-last, and in which autocast dtype (None: fp32): as the recipe
    asks, or for `auto` as timed on the first training batch (training/layout.py, precision.py).
    Leaves model in the chosen layout."""
    first = torch.arange(min(cfg.batch_size, len(train_data)), device=train_data.x.device)
    first_x, first_y = norm(train_data.x[first]), train_data.y[first]
    channels_last = use_channels_last(cfg.channels_last, model, first_x, first_y, loss_fn, cfg.arch)
    fmt = channels_last_format(first_x) if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    amp_dtype = training_autocast(cfg.amp, model, first_x.contiguous(memory_format=fmt), first_y, loss_fn, cfg.arch,
                                  "channels-last" if channels_last else "default")
    return channels_last, amp_dtype


def pin_speed_choices(processed: Path | str, cfg: TrainParams) -> TrainParams:
    """cfg with `channels_last` and `amp` as train() resolves them in this process (measured once
    per model and batch shape), for runs elsewhere that should not time steps again: a child
    process on fewer threads, whose timings its siblings disturb. Leaves the random state alone."""
    if "auto" not in (cfg.channels_last, cfg.amp):
        return cfg
    processed = Path(processed)
    meta = read_meta(processed)
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.arch, input_spec(meta), **model_options(cfg, meta.is_3d)).to(device)
        train_data = load_tensors(processed, "train", device)
        loss_fn = _loss(cfg, meta, device)
        channels_last, amp_dtype = _speed_choices(cfg, model, train_data, Normalizer(meta, device), loss_fn)
    return cfg.model_copy(update={"channels_last": channels_last, "amp": amp_dtype is not None})


def train(
    processed: Path | str,
    cfg: TrainParams,
    out: Path | str,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train cfg.arch on the processed data; checkpoints go to out/ (best.pt, last.pt).

    on_epoch(epoch, record) is called after each epoch's validation (Optuna reports and
    prunes through it); an exception there stops the run with last.pt saved.
    """
    started = time.perf_counter()
    keep_freed_memory()  # every step allocates the same large blocks: reuse their pages (memory.py)
    processed, out = Path(processed), Path(out)
    meta = read_meta(processed)
    spec = input_spec(meta)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    options = model_options(cfg, meta.is_3d)
    model = build_model(cfg.arch, spec, **options).to(device)
    train_data, val_data = (load_tensors(processed, s, device) for s in ("train", "val"))
    if AUTO in (cfg.epochs, cfg.patience):
        epochs, patience = resolve_budget(cfg.epochs, cfg.patience, len(train_data), cfg.batch_size, meta.is_3d)
        log.info("%s/%s: %d epochs, patience %d (auto: %d training %s at batch %d)", meta.flag, cfg.arch, epochs,
                 patience, len(train_data), "volumes" if meta.is_3d else "images", cfg.batch_size)
        cfg = cfg.model_copy(update={"epochs": epochs, "patience": patience})
    if cfg.width == AUTO and "width" in options:
        log.info("%s/%s: channel widths x%g (auto: %s data)", meta.flag, cfg.arch, options["width"],
                 "3D" if meta.is_3d else "2D")
    norm = Normalizer(meta, device)
    loss_fn = _loss(cfg, meta, device)
    channels_last, amp_dtype = _speed_choices(cfg, model, train_data, norm, loss_fn)
    memory_format = channels_last_format(train_data.x) if channels_last else torch.contiguous_format
    layout = "channels-last" if channels_last else "default"
    model = model.to(memory_format=memory_format)
    eval_dtype = amp_dtype if device.type == "cuda" else None  # CPU scores stay fp32 (training/precision.py)
    offset_list = prior_correction(cfg, meta)
    offset = torch.tensor(offset_list, device=device) if offset_list else None
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    sched = _scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    n_batches = math.ceil(len(train_data) / cfg.batch_size)
    ema = WeightAverage(model, cfg.ema_half_life, n_batches) if cfg.ema_half_life else None
    kept = ema.module if ema else model  # what is validated and checkpointed

    run_id = fingerprint(cfg, meta)
    history: list[dict] = []
    start, resumed_from = 1, None
    selector = EpochSelector(cfg.select, cfg.monitor, len(val_data), cfg.patience)
    if cfg.resume and (out / LAST).exists():
        state = load_checkpoint(out / LAST, map_location=device)
        if state.get("fingerprint") == run_id:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            gen.set_state(state["generator"])
            if ema:
                ema.load_state_dict(state["ema"])
            history = state["history"]
            selector.restore(state)
            start = resumed_from = state["epoch"] + 1
            log.info("resuming %s from epoch %d (best so far: epoch %d)", out, start, selector.best_epoch)
        else:
            log.info("%s holds another run's checkpoint; starting afresh", out / LAST)

    base = {
        "arch": cfg.arch, "input": dataclasses.asdict(spec), "model_options": options,
        "task": meta.task, "class_names": meta.class_names, "mean": meta.mean, "std": meta.std,
        "flag": meta.flag, "fingerprint": run_id, "logit_offset": offset_list,
    }
    stopped_early = selector.stopped  # a resumed run that had already stopped
    if stopped_early:
        start = cfg.epochs + 1
    for epoch in range(start, cfg.epochs + 1):
        tick = time.perf_counter()
        model.train()
        running = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(total=n_batches, desc=f"{meta.flag}/{cfg.arch} epoch {epoch}/{cfg.epochs}", leave=False, disable=None)
        for idx in batches(len(train_data), cfg.batch_size, gen):
            if len(idx) < 2 and seen:  # BatchNorm cannot train on a single image
                continue
            idx = idx.to(device)
            x = augment(norm.scale(train_data.x[idx]), cfg.augment, gen, meta.is_3d)
            x = norm.normalize(x)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), train_data.y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if ema:
                ema.update(model)
            running += loss.detach() * len(idx)
            seen += len(idx)
            bar.update()
        bar.close()
        train_loss = float(running) / max(seen, 1)  # one device sync per epoch
        train_seconds = time.perf_counter() - tick
        if not math.isfinite(train_loss):
            kept = (f"best checkpoint (epoch {selector.best_epoch}) kept at {out / BEST}" if selector.best_epoch
                    else "no checkpoint was saved")
            raise TrainingDiverged(
                f"{meta.flag}/{cfg.arch}: training loss became {train_loss} in epoch {epoch}; stopped. "
                f"{kept.capitalize()}. Try a lower lr (now {cfg.lr:g}) or a smaller grad_clip."
            )
        sched.step()

        scores, val_loss = predict_scores(kept, val_data, norm, meta.task, cfg.eval_batch_size, eval_dtype, offset)
        val_auc, val_acc = quick_metrics(val_data, scores, meta.task)
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
            "val_acc": val_acc, "lr": opt.param_groups[0]["lr"], "train_seconds": train_seconds,
            "seconds": time.perf_counter() - tick,
        }
        history.append(record)
        score = windowed(history, cfg.monitor, cfg.monitor_window)
        if selector.observe(epoch, score):
            save_checkpoint(out / BEST, {**base, "model": kept.state_dict(), "epoch": epoch, "val": record})
        save_checkpoint(out / LAST, {
            **base, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "generator": gen.get_state(), "epoch": epoch, "history": history,
            **selector.state(),
            **({"ema": ema.state_dict()} if ema else {}),
        })
        log.info(
            "%s/%s epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f, val ACC %.4f%s (%.1fs)",
            meta.flag, cfg.arch, epoch, train_loss, val_loss, val_auc, val_acc,
            " *" if selector.best_epoch == epoch else "", record["seconds"],
        )
        if on_epoch is not None:
            on_epoch(epoch, record)
        if selector.stopped:
            stopped_early = True
            worse = "within one standard error of its best" if selector.tolerance() else "improvement"
            log.info("early stop: no %s %s for %d epochs", cfg.monitor, worse, cfg.patience)
            break

    if offset is not None and selector.best_epoch:
        _set_prior_strength(out / BEST, model, val_data, norm, meta.task, offset, cfg.eval_batch_size)
    return TrainResult(
        checkpoint=out / BEST, best_epoch=selector.best_epoch, best_score=selector.best_score, history=history,
        stopped_early=stopped_early, resumed_from=resumed_from, device=str(device),
        seconds=time.perf_counter() - started, epochs=cfg.epochs, patience=cfg.patience,
        layout=layout, precision=PRECISION_NAMES[amp_dtype],
    )
