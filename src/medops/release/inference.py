"""The deployable form of a trained model: raw MedMNIST images in, probabilities out.

InferenceModel wraps one checkpoint; Ensemble averages several (and optionally each image's
mirror), the forms medops.evaluation.forms chooses between on validation.

Input is the layout of the official npz files, uint8: (N, H, W) or (N, H, W, C) for 2D,
(N, D, H, W) or (N, D, H, W, C) for 3D. Scaling and normalisation with the training
split's statistics happen inside, so callers never re-implement preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medops.training.checkpoint import model_from_checkpoint
from medops.task_rules import probabilities


class InferenceModel(nn.Module):
    def __init__(self, model: nn.Module, mean: list[float], std: list[float], n_channels: int, is_3d: bool, task: str,
                 offset: list[float] | None = None):
        super().__init__()
        model.eval()  # not chained: an exported graph's eval() returns None
        self.model = model
        shape = (1, -1) + (1,) * (3 if is_3d else 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        # the prior correction of a class-weighted model (task_rules); zeros when there is none
        n_out = len(offset) if offset else 1
        self.register_buffer("offset", torch.tensor(offset or [0.0] * n_out, dtype=torch.float32).view(1, -1))
        self.n_channels = n_channels
        self.task = task

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Raw uint8 images (npz layout) -> the channels-first floats the network was trained on."""
        x = images.unsqueeze(1) if self.n_channels == 1 else images.movedim(-1, 1)
        return (x.float() / 255.0 - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model(self.normalize(images)), self.task, self.offset)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, model: nn.Module) -> "InferenceModel":
        spec = ckpt["input"]
        return cls(model, ckpt["mean"], ckpt["std"], spec["n_channels"], spec["is_3d"], ckpt["task"],
                   ckpt.get("logit_offset"))


def width_axis(n_channels: int) -> int:
    """The image width's axis in the npz layout: (N, [D,] H, W) or (N, [D,] H, W, C)."""
    return -1 if n_channels == 1 else -2


class Ensemble(nn.Module):
    """The mean of the members' probabilities, over each image and (flip) its mirror image."""

    def __init__(self, members: list[InferenceModel], flip: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.flip = flip
        self.width_axis = width_axis(members[0].n_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = [images, images.flip(self.width_axis)] if self.flip else [images]
        return torch.stack([member(view) for member in self.members for view in views]).mean(0)


def load_form(checkpoints: list[Path] | tuple[Path, ...], flip: bool = False) -> nn.Module:
    """The served module of a form; a single model without TTA is its InferenceModel itself."""
    members = []
    for path in checkpoints:
        model, ckpt = model_from_checkpoint(path)
        members.append(InferenceModel.from_checkpoint(ckpt, model).eval())
    if len(members) == 1 and not flip:
        return members[0]
    return Ensemble(members, flip).eval()


def to_medmnist_layout(x: np.ndarray) -> np.ndarray:
    """Processed channels-first uint8 -> the official npz layout (channels last, none for gray)."""
    return x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)
