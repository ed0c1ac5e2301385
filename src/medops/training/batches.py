"""Whole splits as tensors on the training device, cut into batches by indexing.

Images stay uint8 until a batch is taken (4x less memory, host->device copy once);
scaling, augmentation and normalisation then run on the batch, on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from medops.data.processed import ProcessedMeta, load_split


@dataclass
class SplitTensors:
    x: torch.Tensor  # uint8, N x C x [D x] H x W
    y: torch.Tensor  # int64 (N,) or float32 (N, L) for multi-label

    def __len__(self) -> int:
        return len(self.x)


def load_tensors(folder: Path | str, split: str, device: torch.device) -> SplitTensors:
    x, y = load_split(folder, split)
    pin = device.type == "cuda"
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    if pin:
        tx, ty = tx.pin_memory(), ty.pin_memory()
    return SplitTensors(tx.to(device, non_blocking=pin), ty.to(device, non_blocking=pin))


class Normalizer:
    """uint8 -> float in [0, 1] -> (x - mean) / std per channel, as preprocessing measured."""

    def __init__(self, meta: ProcessedMeta, device: torch.device):
        shape = (1, -1) + (1,) * (3 if meta.is_3d else 2)
        self.mean = torch.tensor(meta.mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(meta.std, dtype=torch.float32, device=device).view(shape)

    @staticmethod
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.scale(x))


def batches(n: int, batch_size: int, gen: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over n items: shuffled with gen, in order without."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
