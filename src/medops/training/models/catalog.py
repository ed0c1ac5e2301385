"""Architecture name -> builder. The only place that knows which model fits which data.

Builders are named, not imported: checking params.yaml (every stage does) needs no torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medops.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What a model must accept and predict; read from the processed data's meta.json."""

    n_channels: int
    n_classes: int
    size: int
    is_3d: bool


@dataclass(frozen=True)
class Architecture:
    builder: str  # "<module of medops.training.models>.<function>"
    is_3d: bool
    transfer: bool = False
    scalable: bool = False  # its channel widths follow train.width

    def build(self, **kwargs) -> nn.Module:
        return self._function()(**kwargs)

    def default_dropout(self) -> float | None:
        """The dropout the builder uses when train.dropout is null; None where it takes none."""
        parameter = inspect.signature(self._function()).parameters.get("dropout")
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    def _function(self):
        module, function = self.builder.rsplit(".", 1)
        return getattr(importlib.import_module(f"medops.training.models.{module}"), function)


TRANSFER_BACKBONES = ("vgg16", "resnet50_tl", "densenet121", "efficientnet_b0")  # transfer.BACKBONES
ARCHITECTURES: dict[str, Architecture] = {
    "baseline_cnn": Architecture("cnn.baseline_cnn", is_3d=False, scalable=True),
    "baseline_cnn_pool_first": Architecture("cnn.baseline_cnn_pool_first", is_3d=False, scalable=True),
    "improved_cnn": Architecture("cnn.improved_cnn", is_3d=False, scalable=True),
    "improved_cnn_pool_first": Architecture("cnn.improved_cnn_pool_first", is_3d=False, scalable=True),
    "octnet": Architecture("cnn.octnet", is_3d=False),
    "resnet18": Architecture("resnet.resnet18", is_3d=False),
    "resnet50": Architecture("resnet.resnet50", is_3d=False),
    **{name: Architecture("transfer.transfer_model", is_3d=False, transfer=True) for name in TRANSFER_BACKBONES},
    "cnn3d": Architecture("volumetric.cnn3d", is_3d=True, scalable=True),
    "cnn3d_pool_first": Architecture("volumetric.cnn3d_pool_first", is_3d=True, scalable=True),
    "resnet18_3d": Architecture("volumetric.resnet18_3d", is_3d=True),
}


# What a dataset listed without architectures trains (train.arch when it fits the data).
DEFAULT_ARCH = {False: "baseline_cnn_pool_first", True: "cnn3d_pool_first"}


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


def build_model(name: str, spec: InputSpec, dropout: float | None = None, width: float = 1.0,
                **transfer_options) -> nn.Module:
    """Build `name` for the data described by `spec`.

    dropout=None keeps each architecture's own default; width multiplies the channel widths of
    the scalable ones (the others have none to scale and refuse any width but 1); transfer_options
    (weights, finetune, resize_to) apply to the transfer-learning models only.
    """
    arch = check_fits(name, spec.is_3d)
    kwargs = {} if dropout is None else {"dropout": dropout}
    if arch.scalable:
        kwargs["width"] = width
    elif width != 1:
        raise ConfigError(f"{name} has no width to scale (train.width {width:g}); "
                          f"widths scale for {', '.join(n for n, a in ARCHITECTURES.items() if a.scalable)}")
    if arch.transfer:
        kwargs.update(transfer_options, name=name)
    return arch.build(in_channels=spec.n_channels, n_classes=spec.n_classes, size=spec.size, **kwargs)
