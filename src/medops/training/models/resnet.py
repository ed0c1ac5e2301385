"""2D ResNets from torchvision: MedMNIST-style stem at 28px, the standard one from 64px."""

from __future__ import annotations

import torchvision
from torch import nn


def _adapt_stem(model: nn.Module, in_channels: int, size: int) -> nn.Module:
    if size < 64:
        # As in the MedMNIST v2 paper: 3x3 stride-1 stem and no max-pool keep 28px usable.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def resnet18(in_channels: int, n_classes: int, size: int, dropout: float = 0.0) -> nn.Module:
    return _adapt_stem(torchvision.models.resnet18(num_classes=n_classes), in_channels, size)


def resnet50(in_channels: int, n_classes: int, size: int, dropout: float = 0.0) -> nn.Module:
    return _adapt_stem(torchvision.models.resnet50(num_classes=n_classes), in_channels, size)
