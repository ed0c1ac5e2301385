"""The deployable form of a trained model: raw MedMNIST images in, probabilities out.

Input is the layout of the official npz files, uint8: (N, H, W) or (N, H, W, C) for 2D,
(N, D, H, W) or (N, D, H, W, C) for 3D. Scaling and normalisation with the training
split's statistics happen inside, so callers never re-implement preprocessing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medops.data.info import MULTI_LABEL


class InferenceModel(nn.Module):
    def __init__(self, model: nn.Module, mean: list[float], std: list[float], n_channels: int, is_3d: bool, task: str):
        super().__init__()
        model.eval()  # not chained: an exported graph's eval() returns None
        self.model = model
        shape = (1, -1) + (1,) * (3 if is_3d else 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        self.n_channels = n_channels
        self.multi_label = task == MULTI_LABEL

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1) if self.n_channels == 1 else images.movedim(-1, 1)
        x = (x.float() / 255.0 - self.mean) / self.std
        logits = self.model(x)
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, model: nn.Module) -> "InferenceModel":
        spec = ckpt["input"]
        return cls(model, ckpt["mean"], ckpt["std"], spec["n_channels"], spec["is_3d"], ckpt["task"])


def to_medmnist_layout(x: np.ndarray) -> np.ndarray:
    """Processed channels-first uint8 -> the official npz layout (channels last, none for gray)."""
    return x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)
