"""Train one (dataset, architecture), then evaluate the best checkpoint once on val and test."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from medops.training.batches import Normalizer, load_tensors
from medops.training.checkpoint import model_from_checkpoint
from medops.config import TrainParams
from medops.data.processed import read_meta
from medops.evaluation.metrics import compute_metrics, plot_history, write_plots
from medops.training.scoring import predict_scores
from medops.files import write_json
from medops.plotting import save
from medops.training.loop import TrainResult, pin_speed_choices, resolve_device, train
from medops.training.side_by_side import processes_for, train_side_by_side

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: Path, processed: Path, splits=("val", "test"), device="cpu") -> dict:
    """Full metrics of a checkpoint on the given splits, plus the raw scores for plots."""
    device = torch.device(device)
    model, ckpt = model_from_checkpoint(checkpoint, map_location=device)
    model.to(device)
    meta = read_meta(processed)
    norm = Normalizer(meta, device)
    offset = torch.tensor(ckpt["logit_offset"], device=device) if ckpt.get("logit_offset") else None
    results = {}
    for split in splits:
        data = load_tensors(processed, split, device)
        scores, loss = predict_scores(model, data, norm, meta.task, offset=offset)
        y = data.y.cpu().numpy()
        results[split] = {"y": y, "scores": scores, "metrics": {**compute_metrics(y, scores, meta.task, meta.class_names), "loss": loss}}
    return results


def train_and_evaluate(processed: Path, cfg: TrainParams, models_dir: Path, reports_dir: Path,
                       on_epoch=None) -> tuple[TrainResult, dict]:
    """The `medops train` unit of work: checkpoints in models_dir, metrics + PNGs in reports_dir."""
    processed, models_dir, reports_dir = Path(processed), Path(models_dir), Path(reports_dir)
    result = train(processed, cfg, models_dir, on_epoch=on_epoch)
    meta = read_meta(processed)
    evaluated = evaluate_checkpoint(result.checkpoint, processed, device=resolve_device(cfg.device))
    title = f"{meta.flag} / {cfg.arch}"
    for split, r in evaluated.items():
        write_plots(reports_dir, split, r["y"], r["scores"], r["metrics"], meta.task, meta.class_names, title)
    if result.history:
        save(plot_history(result.history, cfg.monitor, title), reports_dir / "history.png")
    n_params = sum(p.numel() for p in model_from_checkpoint(result.checkpoint)[0].parameters())
    summary = {
        "flag": meta.flag, "arch": cfg.arch, "task": meta.task,
        "val": evaluated["val"]["metrics"], "test": evaluated["test"]["metrics"],
        "best_epoch": result.best_epoch, "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "epochs": result.epochs, "patience": result.patience,
        "resumed_from": result.resumed_from, "device": result.device, "seconds": round(result.seconds, 2),
        "layout": result.layout, "precision": result.precision,
        "parameters": n_params, "config": cfg.model_dump(), "history": result.history,
        "checkpoint": str(result.checkpoint),
    }
    write_json(reports_dir / "metrics.json", summary)
    log.info(
        "%s: best epoch %d, val AUC %.4f ACC %.4f, test AUC %.4f ACC %.4f",
        title, result.best_epoch, summary["val"]["auc"], summary["val"]["acc"], summary["test"]["auc"], summary["test"]["acc"],
    )
    return result, summary


def seed_runs(processed: Path, cfg: TrainParams, epochs: int, seeds: list[int], out_root: Path,
              processes: int | str = 1) -> list[dict]:
    """The same recipe trained for a fixed number of epochs with other seeds, each evaluated on
    test for the report's mean +- std (nothing is selected with these test numbers; the
    checkpoints may join the registered ensemble, chosen on validation). With processes > 1
    (or `auto`, training/side_by_side.py) the runs train side by side in child processes."""
    device = resolve_device(cfg.device)
    processes = processes_for(processes, len(seeds), device.type)
    if processes > 1:
        cfg = pin_speed_choices(processed, cfg)  # the children do not time steps again
    configs = [cfg.model_copy(update={"seed": s, "epochs": max(1, epochs), "patience": max(1, epochs)}) for s in seeds]
    outs = [Path(out_root) / f"seed-{s}" for s in seeds]
    bar = tqdm(total=len(seeds), desc=f"{cfg.arch} seed runs", leave=False, disable=None)  # terminals only
    if processes > 1:
        trained = train_side_by_side(processed, list(zip(configs, outs)), processes, on_done=lambda _: bar.update())
    else:
        trained = []
        for run_cfg, out in zip(configs, outs):
            result = train(processed, run_cfg, out)
            trained.append({"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch})
            bar.update()
    bar.close()
    results = []
    for seed, run in zip(seeds, trained):
        test = evaluate_checkpoint(Path(run["checkpoint"]), processed, ("test",), device)["test"]["metrics"]
        results.append({"seed": seed, "auc": test["auc"], "acc": test["acc"], "best_epoch": run["best_epoch"],
                        "checkpoint": run["checkpoint"]})
        log.info("%s seed %d: test AUC %.4f ACC %.4f", cfg.arch, seed, test["auc"], test["acc"])
    return results


__all__ = ["evaluate_checkpoint", "seed_runs", "train_and_evaluate"]
