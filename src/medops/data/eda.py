"""eda stage: PNG plots a person looks at before training on a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medops import paths
from medops.config import EdaParams
from medops.data.info import SPLITS
from medops.data.processed import ProcessedMeta, load_split, read_meta
from medops.files import atomic_dir
from medops.plotting import plt, save


def _display(image: np.ndarray, is_3d: bool) -> np.ndarray:
    """One channels-first image -> something imshow takes (middle axial slice for 3D)."""
    if is_3d:
        image = image[:, image.shape[1] // 2]
    return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)


def _members(labels: np.ndarray, cls: int) -> np.ndarray:
    return np.flatnonzero(labels[:, cls] > 0 if labels.ndim == 2 else labels == cls)


def sample_grid(meta: ProcessedMeta, x: np.ndarray, y: np.ndarray, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    k = meta.n_classes
    fig, axes = plt.subplots(k, per_class, figsize=(per_class * 1.1, k * 1.2), squeeze=False)
    for cls, row in enumerate(axes):
        members = _members(y, cls)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(chosen):
                ax.imshow(_display(x[chosen[j]], meta.is_3d), cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{cls}: {meta.class_names[cls]} (n={len(members)})", loc="left", fontsize=8)
    fig.suptitle(f"{meta.flag}: training samples per class" + (" (middle slice)" if meta.is_3d else ""))
    return fig


def class_distribution(meta: ProcessedMeta, labels: dict[str, np.ndarray]):
    fig, ax = plt.subplots(figsize=(max(6, meta.n_classes * 0.8), 4))
    width = 0.8 / len(labels)
    xs = np.arange(meta.n_classes)
    for i, (split, y) in enumerate(labels.items()):
        counts = y.sum(axis=0) if y.ndim == 2 else np.bincount(y, minlength=meta.n_classes)
        ax.bar(xs + i * width, counts, width, label=f"{split} (n={len(y)})")
    ax.set_xticks(xs + width, meta.class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images" if labels["train"].ndim == 1 else "positive images")
    ax.set_title(f"{meta.flag}: class distribution per split")
    ax.legend()
    return fig


def intensity_maps(meta: ProcessedMeta, x: np.ndarray):
    """Per-pixel mean and std over the training split (channels averaged)."""
    pixels = x.astype(np.float32).mean(axis=1)  # N,[D,]H,W
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    if meta.is_3d:
        mean, std = mean[mean.shape[0] // 2], std[std.shape[0] // 2]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, data, title in ((axes[0], mean, "mean intensity"), (axes[1], std, "per-pixel std")):
        im = ax.imshow(data, cmap="viridis")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{meta.flag}: train split" + (" (middle slice)" if meta.is_3d else ""))
    return fig


def pixel_histogram(meta: ProcessedMeta, images: dict[str, np.ndarray]):
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, x in images.items():
        counts = np.bincount(x.ravel(), minlength=256)
        ax.plot(np.arange(256), counts / counts.sum(), label=split)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("fraction of pixels")
    ax.set_yscale("log")
    ax.set_title(f"{meta.flag}: pixel intensity histogram")
    ax.legend()
    return fig


def volume_slices(meta: ProcessedMeta, x: np.ndarray, y: np.ndarray, seed: int):
    """3D sets: middle slice on each axis for one volume per class."""
    rng = np.random.default_rng(seed)
    k = meta.n_classes
    fig, axes = plt.subplots(k, 3, figsize=(6, 2.1 * k), squeeze=False)
    for cls, row in enumerate(axes):
        members = _members(y, cls)
        for ax in row:
            ax.axis("off")
        if not len(members):
            continue
        vol = x[rng.choice(members)].mean(axis=0)  # D,H,W
        d, h, w = (s // 2 for s in vol.shape)
        for ax, img, name in zip(row, (vol[d], vol[:, h], vol[:, :, w]), ("axial", "coronal", "sagittal")):
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{meta.class_names[cls]}: {name}", fontsize=8)
    fig.suptitle(f"{meta.flag}: middle slices on each axis")
    return fig


def eda(flag: str, params: EdaParams, processed: Path | None = None, out: Path | None = None) -> Path:
    processed = Path(processed or paths.processed_dir(flag))
    out = Path(out or paths.eda_dir(flag))
    meta = read_meta(processed)
    data = {split: load_split(processed, split) for split in SPLITS}
    images = {s: xy[0] for s, xy in data.items()}
    labels = {s: xy[1] for s, xy in data.items()}
    x, y = data["train"]

    with atomic_dir(out) as tmp:
        save(sample_grid(meta, x, y, params.samples_per_class, params.seed), tmp / "samples.png")
        save(class_distribution(meta, labels), tmp / "class_distribution.png")
        save(intensity_maps(meta, x), tmp / "intensity_maps.png")
        save(pixel_histogram(meta, images), tmp / "pixel_histogram.png")
        if meta.is_3d:
            save(volume_slices(meta, x, y, params.seed), tmp / "volume_slices.png")
    return out
