"""3D models for the *MNIST3D sets (inputs N, C, D, H, W)."""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models.video.resnet import BasicStem

from medops.training.models.cnn import block_layers, scaled


def resnet18_3d(in_channels: int, n_classes: int, size: int, dropout: float = 0.0) -> nn.Module:
    """torchvision's R3D-18 with the stem taking our channels; stride 1 in-plane at 28px."""
    model = torchvision.models.video.r3d_18(num_classes=n_classes)
    stem = BasicStem()
    stride = (1, 1, 1) if size < 64 else (1, 2, 2)
    kernel, padding = ((3, 3, 3), (1, 1, 1)) if size < 64 else ((3, 7, 7), (1, 3, 3))
    stem[0] = nn.Conv3d(in_channels, 64, kernel, stride=stride, padding=padding, bias=False)
    model.stem = stem
    if dropout:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def _cnn3d(in_channels: int, n_classes: int, dropout: float, pool_first: bool, width: float) -> nn.Sequential:
    widths = [in_channels, *scaled([16, 32, 64], width)]
    blocks = []
    for a, b in zip(widths, widths[1:]):
        conv, norm = nn.Conv3d(a, b, 3, padding=1, bias=False), nn.BatchNorm3d(b)
        blocks += block_layers(conv, norm, nn.MaxPool3d(2), pool_first)
    return nn.Sequential(
        *blocks, nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], n_classes)
    )


def cnn3d(in_channels: int, n_classes: int, size: int, dropout: float = 0.5, width: float = 1.0) -> nn.Module:
    """3 x (Conv3d-BN-ReLU-MaxPool), global average pool, dropout 0.5, linear head.

    Widths 16-32-64 keep a 28^3 epoch of AdrenalMNIST3D to seconds on a 2-core CPU. Kept as it
    was: checkpoints and registered models of this name rebuild it by its module order.
    """
    return _cnn3d(in_channels, n_classes, dropout, pool_first=False, width=width)


def cnn3d_pool_first(in_channels: int, n_classes: int, size: int, dropout: float = 0.5,
                     width: float = 1.0) -> nn.Module:
    """cnn3d with each block pooled straight after its convolution: 3 x (Conv3d-MaxPool-BN-ReLU).

    Batch norm and ReLU then work on an eighth of the voxels, which is most of what a 3D training
    step spends besides the convolutions: the trainer makes 1.3x (AVX2) to 1.6x (AVX-512) the
    volumes per second of cnn3d on 2 CPU cores, and on AdrenalMNIST3D test AUC is higher for each
    of 6 seeds (README, Benchmarks). Same parameters as cnn3d.
    """
    return _cnn3d(in_channels, n_classes, dropout, pool_first=True, width=width)
