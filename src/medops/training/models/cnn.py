"""Plain CNNs the replaced notebooks each hand-rolled: baseline, improved, OctNet."""

from __future__ import annotations

from torch import nn


def block_layers(conv: nn.Module, norm: nn.Module, pool: nn.Module | None, pool_first: bool) -> list[nn.Module]:
    """A block's layers in order, 2D or 3D: Conv-BN-ReLU-MaxPool, or with pool_first
    Conv-MaxPool-BN-ReLU, where batch norm and ReLU work on the pooled pixels only (a quarter
    in 2D, an eighth in 3D; README, Benchmarks: faster, and better on the sets measured)."""
    relu = nn.ReLU(inplace=True)
    if pool is None:
        return [conv, norm, relu]
    return [conv, pool, norm, relu] if pool_first else [conv, norm, relu, pool]


def conv_block(c_in: int, c_out: int, pool: bool = True, pool_first: bool = False) -> nn.Sequential:
    conv, norm = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
    return nn.Sequential(*block_layers(conv, norm, nn.MaxPool2d(2) if pool else None, pool_first))


def scaled(widths: list[int], width: float) -> list[int]:
    """Channel widths times `width` (train.width), at least one channel each."""
    return [max(1, round(w * width)) for w in widths]


def _head(features: nn.Module, width: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, n_classes)
    )


def _pooled_blocks(in_channels: int, pool_first: bool, width: float) -> tuple[list[nn.Sequential], int]:
    """The four pooled blocks, widths 32-64-128-256 times `width`, that baseline_cnn and
    improved_cnn share, and the channels they end with."""
    widths = [in_channels, *scaled([32, 64, 128, 256], width)]
    return [conv_block(a, b, pool_first=pool_first) for a, b in zip(widths, widths[1:])], widths[-1]


def _baseline(in_channels: int, n_classes: int, dropout: float, pool_first: bool, width: float) -> nn.Module:
    blocks, channels = _pooled_blocks(in_channels, pool_first, width)
    return _head(nn.Sequential(*blocks), channels, n_classes, dropout)


def _improved(in_channels: int, n_classes: int, dropout: float, pool_first: bool, width: float) -> nn.Module:
    blocks, channels = _pooled_blocks(in_channels, pool_first, width)
    return _head(nn.Sequential(*blocks, conv_block(channels, channels, pool=False)), channels, n_classes, dropout)


# The *_pool_first models are their own names, not an option of the plain ones: checkpoints and
# registered models rebuild an architecture by name and load its weights by module position.
def baseline_cnn(in_channels: int, n_classes: int, size: int, dropout: float = 0.0, width: float = 1.0) -> nn.Module:
    """4 x (Conv-BN-ReLU-MaxPool), global average pool, linear head."""
    return _baseline(in_channels, n_classes, dropout, pool_first=False, width=width)


def baseline_cnn_pool_first(in_channels: int, n_classes: int, size: int, dropout: float = 0.0,
                            width: float = 1.0) -> nn.Module:
    """4 x (Conv-MaxPool-BN-ReLU), global average pool, linear head."""
    return _baseline(in_channels, n_classes, dropout, pool_first=True, width=width)


def improved_cnn(in_channels: int, n_classes: int, size: int, dropout: float = 0.3, width: float = 1.0) -> nn.Module:
    """The baseline plus a 5th conv block (no pool: 28px is 1x1 by then) and dropout."""
    return _improved(in_channels, n_classes, dropout, pool_first=False, width=width)


def improved_cnn_pool_first(in_channels: int, n_classes: int, size: int, dropout: float = 0.3,
                            width: float = 1.0) -> nn.Module:
    """improved_cnn with its four pooled blocks pooled straight after the convolution."""
    return _improved(in_channels, n_classes, dropout, pool_first=True, width=width)


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
