"""Plain CNNs the replaced notebooks each hand-rolled: baseline, improved, OctNet."""

from __future__ import annotations

from torch import nn


def conv_block(c_in: int, c_out: int, pool: bool = True, pool_first: bool = False) -> nn.Sequential:
    """Conv-BN-ReLU-MaxPool, or with pool_first Conv-MaxPool-BN-ReLU: batch norm and ReLU then
    work on a quarter of the pixels (README, Benchmarks: faster, and better on the 2D sets)."""
    conv, norm, relu = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    if not pool:
        return nn.Sequential(conv, norm, relu)
    pool_layer = nn.MaxPool2d(2)
    return nn.Sequential(conv, pool_layer, norm, relu) if pool_first else nn.Sequential(conv, norm, relu, pool_layer)


def _head(features: nn.Module, width: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, n_classes)
    )


def _baseline(in_channels: int, n_classes: int, dropout: float, pool_first: bool) -> nn.Module:
    widths = [in_channels, 32, 64, 128, 256]
    blocks = nn.Sequential(*(conv_block(a, b, pool_first=pool_first) for a, b in zip(widths, widths[1:])))
    return _head(blocks, widths[-1], n_classes, dropout)


def _improved(in_channels: int, n_classes: int, dropout: float, pool_first: bool) -> nn.Module:
    widths = [in_channels, 32, 64, 128, 256]
    blocks = [conv_block(a, b, pool_first=pool_first) for a, b in zip(widths, widths[1:])]
    blocks.append(conv_block(256, 256, pool=False))
    return _head(nn.Sequential(*blocks), 256, n_classes, dropout)


# The *_pool_first models are their own names, not an option of the plain ones: checkpoints and
# registered models rebuild an architecture by name and load its weights by module position.
def baseline_cnn(in_channels: int, n_classes: int, size: int, dropout: float = 0.0) -> nn.Module:
    """4 x (Conv-BN-ReLU-MaxPool), global average pool, linear head."""
    return _baseline(in_channels, n_classes, dropout, pool_first=False)


def baseline_cnn_pool_first(in_channels: int, n_classes: int, size: int, dropout: float = 0.0) -> nn.Module:
    """4 x (Conv-MaxPool-BN-ReLU), global average pool, linear head."""
    return _baseline(in_channels, n_classes, dropout, pool_first=True)


def improved_cnn(in_channels: int, n_classes: int, size: int, dropout: float = 0.3) -> nn.Module:
    """The baseline plus a 5th conv block (no pool: 28px is 1x1 by then) and dropout."""
    return _improved(in_channels, n_classes, dropout, pool_first=False)


def improved_cnn_pool_first(in_channels: int, n_classes: int, size: int, dropout: float = 0.3) -> nn.Module:
    """improved_cnn with its four pooled blocks pooled straight after the convolution."""
    return _improved(in_channels, n_classes, dropout, pool_first=True)


def octnet(in_channels: int, n_classes: int, size: int, dropout: float = 0.5) -> nn.Module:
    """OctNet: 6 conv blocks with ReLU and max-pool, pooled to a 512-d feature, 3-layer MLP head.

    Pools stop once the feature map is 1 pixel wide, so 28px inputs work as well as 224px.
    About 4.1 M parameters (1 channel, 2 classes) against 23.5 M for ResNet-50: 5.7x fewer.
    """
    widths = [in_channels, 32, 64, 128, 256, 512, 512]
    blocks, spatial = [], size
    for a, b in zip(widths, widths[1:]):
        pool = spatial >= 2
        blocks.append(conv_block(a, b, pool=pool))
        spatial = spatial // 2 if pool else spatial
    return nn.Sequential(
        nn.Sequential(*blocks), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(128, n_classes),
    )
