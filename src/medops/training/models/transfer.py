"""Transfer learning from torchvision backbones.

weights: "imagenet" (torchvision's download; fails clearly offline), "none" (random init),
or a path to a state dict of the same torchvision architecture.
finetune: "frozen" trains only the new head, "partial" also the last stage, "full" all.
Small inputs are upsampled to `resize_to` pixels (default 64) and grayscale is repeated to
3 channels, since these stems were built for 3-channel ImageNet photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from medops.errors import ConfigError, MedopsError


@dataclass(frozen=True)
class Backbone:
    build: Callable[..., nn.Module]
    head: str  # attribute path of the final Linear layer, replaced for our classes
    last_stage: str  # attribute path trained as well under finetune: partial


BACKBONES = {
    "vgg16": Backbone(torchvision.models.vgg16, "classifier.6", "features.24"),
    "resnet50_tl": Backbone(torchvision.models.resnet50, "fc", "layer4"),
    "densenet121": Backbone(torchvision.models.densenet121, "classifier", "features.denseblock4"),
    "efficientnet_b0": Backbone(torchvision.models.efficientnet_b0, "classifier.1", "features.7"),
}


class InputAdapter(nn.Module):
    """Grayscale -> 3 channels and small images -> resize_to pixels, inside the model."""

    def __init__(self, in_channels: int, size: int, resize_to: int):
        super().__init__()
        self.repeat = 3 if in_channels == 1 else 1
        self.resize_to = resize_to if size < resize_to else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        if self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return x


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    owner = _get(module, parent) if parent else module
    if leaf.isdigit():
        owner[int(leaf)] = value
    else:
        setattr(owner, leaf, value)


def _load_backbone(name: str, spec: Backbone, weights: str) -> nn.Module:
    if weights == "none":
        return spec.build(weights=None)
    if weights == "imagenet":
        try:
            return spec.build(weights="DEFAULT")
        except Exception as exc:  # URLError, socket errors, hash mismatch...
            raise MedopsError(
                f"{name}: could not get ImageNet weights through torchvision ({exc.__class__.__name__}: {exc}). "
                "Offline? Use weights: none, or a path to a saved state dict."
            ) from None
    path = Path(weights)
    if not path.exists():
        raise ConfigError(f"{name}: weights must be imagenet, none or an existing file; {path} does not exist")
    model = spec.build(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise MedopsError(f"{path}: not a {name} state dict ({str(exc).splitlines()[0]})") from None
    return model


def transfer_model(
    name: str, in_channels: int, n_classes: int, size: int, dropout: float = 0.0,
    weights: str = "none", finetune: str = "full", resize_to: int = 64,
) -> nn.Module:
    if finetune not in ("frozen", "partial", "full"):
        raise ConfigError(f"finetune must be frozen, partial or full; got {finetune!r}")
    spec = BACKBONES[name]
    backbone = _load_backbone(name, spec, weights)
    old = _get(backbone, spec.head)
    _set(backbone, spec.head, nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, n_classes)))
    if finetune != "full":
        backbone.requires_grad_(False)
        _get(backbone, spec.head).requires_grad_(True)
        if finetune == "partial":
            _get(backbone, spec.last_stage).requires_grad_(True)
    return nn.Sequential(InputAdapter(in_channels, size, resize_to), backbone)
