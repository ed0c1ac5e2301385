"""Synthetic files in the exact MedMNIST npz layout, for any INFO flag and size.

Each class draws a bright patch in its own cell of a grid over a noisy background, so a
small model can learn the task; multi-label images carry the patch of every positive
label. Used by the tests for task types that have no real file on this machine.

`priors` makes single-label sets imbalanced (class shares, as in most real sets) and sets a
multi-label set's positive rate per label (default 0.3 each); `ambiguity` draws that share of
patches in a random class's cell instead of the image's own (for multi-label, of each positive
label's patches), so no model is sure of every image and the decision rule decides part of the
accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medops.data.info import MULTI_LABEL, SPLITS, DatasetSpec, resolve
from medops.files import atomic_path


def _labels(spec: DatasetSpec, n: int, rng: np.random.Generator, priors: list[float] | None) -> np.ndarray:
    k = spec.n_classes
    if spec.task == MULTI_LABEL:
        rates = 0.3 if priors is None else np.asarray(priors, dtype=float)
        y = (rng.random((n, k)) < rates).astype(np.uint8)
        y[np.arange(min(n, k)), np.arange(min(n, k))] = 1  # every label appears at least once
        return y
    if priors is None:
        return rng.permutation(np.arange(n) % k).astype(np.uint8).reshape(n, 1)
    counts = np.maximum(1, np.round(np.asarray(priors) / np.sum(priors) * n)).astype(int)  # every class present
    counts[np.argmax(counts)] += n - counts.sum()
    return rng.permutation(np.repeat(np.arange(k), counts)).astype(np.uint8).reshape(n, 1)


def _images(spec: DatasetSpec, labels: np.ndarray, rng: np.random.Generator, ambiguity: float) -> np.ndarray:
    dims = 3 if spec.is_3d else 2
    k, size, n = spec.n_classes, spec.size, len(labels)
    grid = math.ceil(k ** (1 / dims) - 1e-9)
    cell = size // grid
    x = rng.normal(60, 20, size=(n, *(size,) * dims, spec.n_channels))
    drawn = labels.copy()
    if ambiguity and spec.task == MULTI_LABEL:
        moved = (drawn > 0) & (rng.random(drawn.shape) < ambiguity)
        rows = np.nonzero(moved)[0]
        drawn[moved] = 0
        drawn[rows, rng.integers(0, k, len(rows))] = 1
    elif ambiguity:
        moved = rng.random(n) < ambiguity
        drawn[moved, 0] = rng.integers(0, k, moved.sum())
    for cls in range(k):
        corner = np.unravel_index(cls, (grid,) * dims)
        region = tuple(slice(c * cell + cell // 4, c * cell + 3 * cell // 4) for c in corner)
        members = drawn[:, cls] > 0 if spec.task == MULTI_LABEL else drawn[:, 0] == cls
        x[(members, *region)] += 120 + 20 * rng.random((members.sum(), *(1,) * (dims + 1)))
    x = np.clip(x, 0, 255).astype(np.uint8)
    return x if spec.n_channels > 1 else x[..., 0]


def make_arrays(spec: DatasetSpec, samples: int | dict[str, int], seed: int = 0, priors: list[float] | None = None,
                ambiguity: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = samples if isinstance(samples, dict) else {s: samples for s in SPLITS}
    arrays = {}
    for split in SPLITS:
        labels = _labels(spec, counts[split], rng, priors)
        arrays[f"{split}_images"] = _images(spec, labels, rng, ambiguity)
        arrays[f"{split}_labels"] = labels
    return arrays


def write_synthetic(flag: str, size: int, samples: int, out_dir: Path | str, seed: int = 0) -> Path:
    """Write <out_dir>/<flag>[_size].npz, named as the official file would be."""
    spec = resolve(flag, size)
    path = Path(out_dir) / spec.filename
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **make_arrays(spec, samples, seed))
    return path
