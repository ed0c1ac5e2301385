"""Training throughput: the medops trainer against two baselines, in one process.

    python bench/train_throughput.py [--flag pneumoniamnist] [--archs baseline_cnn resnet18]
    python bench/train_throughput.py --flag adrenalmnist3d --archs cnn3d --limit 1188 --batch-size 32
    python bench/train_throughput.py --archs baseline_cnn_pool_first --widths 1 2

Needs data/processed/<flag> and data/raw/<flag>.npz (run `make run` first). For each
architecture it trains on the same images with the same model, batch size and optimiser
(no augmentation, no clipping) and prints images/s for:
  trainer     medops.training.loop.train (whole split on the device, index batches)
  plain       a minimal hand-written loop over an in-memory float tensor
  dataloader  medmnist Dataset + torch DataLoader, as the MedMNIST experiment code does
and the ratios trainer/plain and trainer/dataloader. Best of --repeats runs each. The plain
CNNs train at each of --widths (train.width; default 1, the widths the README's tables name).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import medmnist
import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader

from medops import paths
from medops.config import TrainParams
from medops.data.info import resolve
from medops.data.processed import read_meta
from medops.training.models import ARCHITECTURES, build_model
from medops.task_rules import loss_function
from medops.training.loop import input_spec, model_options, resolve_device, train


def subset_processed(src: Path, dst: Path, limit: int) -> None:
    """A copy of the processed data whose train split holds the first `limit` images."""
    shutil.copytree(src, dst)
    for part in ("images", "labels"):
        arr = np.load(src / f"train_{part}.npy")[:limit]
        np.save(dst / f"train_{part}.npy", arr)
        np.save(dst / f"val_{part}.npy", np.load(src / f"val_{part}.npy")[:32])


def run_trainer(processed: Path, cfg: TrainParams, workdir: Path) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    result = train(processed, cfg, workdir)
    return result.history[-1]["train_seconds"]


def fresh_model(meta, cfg: TrainParams, device: torch.device):
    """The same seeded model, weighted loss and optimiser the trainer builds, in train mode."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, input_spec(meta), **model_options(cfg, meta.is_3d)).to(device).train()
    loss_fn = loss_function(meta.task, torch.tensor(meta.class_weights, device=device))
    return model, loss_fn, torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def run_plain(processed: Path, cfg: TrainParams, device: torch.device) -> float:
    meta = read_meta(processed)
    x = torch.from_numpy(np.load(processed / "train_images.npy")).float().div(255)
    per_channel = (1, -1, *[1] * (x.dim() - 2))  # (N, C, H, W) or (N, C, D, H, W)
    mean, std = torch.tensor(meta.mean).view(per_channel), torch.tensor(meta.std).view(per_channel)
    x = ((x - mean) / std).to(device)
    y = torch.from_numpy(np.load(processed / "train_labels.npy")).to(device)
    model, loss_fn, opt = fresh_model(meta, cfg, device)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / cfg.epochs


def run_dataloader(flag: str, limit: int, cfg: TrainParams, device: torch.device, processed: Path) -> float:
    meta = read_meta(processed)
    spec = resolve(flag, meta.size)
    root = tempfile.mkdtemp()
    shutil.copy(paths.raw_file(flag), Path(root) / spec.filename)
    if meta.is_3d:  # the 3D Dataset hands over a (C, D, H, W) array in [0, 1]
        mean, std = (torch.tensor(v).view(-1, 1, 1, 1) for v in (meta.mean, meta.std))
        transform = lambda img: (torch.as_tensor(img, dtype=torch.float32) - mean) / std  # noqa: E731
    else:
        transform = T.Compose([T.ToTensor(), T.Normalize(mean=meta.mean, std=meta.std)])
    dataset = getattr(medmnist, spec.info["python_class"])(split="train", transform=transform, root=root, size=meta.size)
    dataset.imgs, dataset.labels = dataset.imgs[:limit], dataset.labels[:limit]
    dataset.info = {**dataset.info, "n_samples": {**dataset.info["n_samples"], "train": len(dataset.imgs)}}
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    model, loss_fn, opt = fresh_model(meta, cfg, device)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.view(-1).long().to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    shutil.rmtree(root)
    return (time.perf_counter() - start) / cfg.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--archs", nargs="+", default=["baseline_cnn", "resnet18"])
    parser.add_argument("--limit", type=int, nargs="+", default=[4708, 512], help="train images per arch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0], help="train.width of the plain CNNs")
    parser.add_argument("--amp", choices=["auto", "true", "false"], default="auto",
                        help="the trainer's train.amp (the loops it is compared with train in fp32)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    limits = dict(zip(args.archs, args.limit + [args.limit[-1]] * len(args.archs)))

    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"{'arch':<14}{'images':>8}{'trainer img/s':>15}{'plain img/s':>13}{'dataloader img/s':>18}"
          f"{'trainer/plain':>15}{'trainer/dataloader':>20}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, width in [(a, w) for a in args.archs for w in (args.widths if ARCHITECTURES[a].scalable else [1.0])]:
            n = limits[arch]
            processed = Path(tmp) / f"processed-{arch}"
            if not processed.exists():
                subset_processed(paths.processed_dir(args.flag), processed, n)
            cfg = TrainParams(arch=arch, epochs=1, batch_size=args.batch_size, grad_clip=None, device=str(device.type),
                              augment={"enabled": False}, schedule="none", resume=False, width=width,
                              amp={"true": True, "false": False}.get(args.amp, "auto"))
            label = arch if width == 1 else f"{arch} x{width:g}"
            # warm-up (allocator, cuDNN autotune, first-call overheads), then best of N each, interleaved
            run_plain(processed, cfg, device)
            best = {"trainer": float("inf"), "plain": float("inf"), "dataloader": float("inf")}
            for _ in range(args.repeats):
                best["trainer"] = min(best["trainer"], run_trainer(processed, cfg, Path(tmp) / "run"))
                best["plain"] = min(best["plain"], run_plain(processed, cfg, device))
                best["dataloader"] = min(best["dataloader"], run_dataloader(args.flag, n, cfg, device, processed))
            rate = {k: n / v for k, v in best.items()}
            print(f"{label:<14}{n:>8}{rate['trainer']:>15.0f}{rate['plain']:>13.0f}{rate['dataloader']:>18.0f}"
                  f"{rate['trainer'] / rate['plain']:>15.2f}{rate['trainer'] / rate['dataloader']:>20.2f}", flush=True)


if __name__ == "__main__":
    main()
