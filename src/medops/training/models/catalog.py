"""Registry name -> builder. The only place that knows which model fits which data."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn

from medops.errors import ConfigError
from medops.training.models import cnn, resnet, transfer, volumetric


@dataclass(frozen=True)
class InputSpec:
    """What a model must accept and predict; read from the processed data's meta.json."""

    n_channels: int
    n_classes: int
    size: int
    is_3d: bool


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]
    is_3d: bool
    transfer: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "baseline_cnn": Architecture(cnn.baseline_cnn, is_3d=False),
    "improved_cnn": Architecture(cnn.improved_cnn, is_3d=False),
    "octnet": Architecture(cnn.octnet, is_3d=False),
    "resnet18": Architecture(resnet.resnet18, is_3d=False),
    "resnet50": Architecture(resnet.resnet50, is_3d=False),
    **{
        name: Architecture(functools.partial(transfer.transfer_model, name), is_3d=False, transfer=True)
        for name in transfer.BACKBONES
    },
    "cnn3d": Architecture(volumetric.cnn3d, is_3d=True),
    "resnet18_3d": Architecture(volumetric.resnet18_3d, is_3d=True),
}


# What a dataset listed without architectures trains (train.arch when it fits the data).
DEFAULT_ARCH = {False: "baseline_cnn", True: "cnn3d"}


def fitting(is_3d: bool) -> list[str]:
    return [name for name, arch in ARCHITECTURES.items() if arch.is_3d == is_3d]


def check_fits(name: str, is_3d: bool) -> Architecture:
    kind = "3D" if is_3d else "2D"
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; for {kind} data use one of: {', '.join(fitting(is_3d))}")
    arch = ARCHITECTURES[name]
    if arch.is_3d != is_3d:
        raise ConfigError(
            f"{name} is a {'3D' if arch.is_3d else '2D'} model but the data is {kind}; "
            f"use one of: {', '.join(fitting(is_3d))}"
        )
    return arch


def build_model(name: str, spec: InputSpec, dropout: float | None = None, **transfer_options) -> nn.Module:
    """Build `name` for the data described by `spec`.

    dropout=None keeps each architecture's own default; transfer_options (weights,
    finetune, resize_to) apply to the transfer-learning models only.
    """
    arch = check_fits(name, spec.is_3d)
    kwargs = {} if dropout is None else {"dropout": dropout}
    if arch.transfer:
        kwargs.update(transfer_options)
    return arch.build(in_channels=spec.n_channels, n_classes=spec.n_classes, size=spec.size, **kwargs)
