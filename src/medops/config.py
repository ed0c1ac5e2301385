"""Typed view of params.yaml: the one place that reads it.

Unknown keys are rejected (``extra="forbid"``) so a typo fails before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medops.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
MIRROR_ENV = "MEDOPS_MIRROR"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetParams(_Strict):
    size: int = 28
    # official: the file must match the md5 in medmnist.INFO and the split sizes INFO lists.
    # custom: a file of your own in the MedMNIST layout (md5 and split sizes not checked).
    source: Literal["official", "custom"] = "official"
    # Multi-label sets only: turn into single-label (first positive label, or "normal").
    single_label: bool = False


class DataParams(_Strict):
    mirror: str | None = None
    datasets: dict[str, DatasetParams] = Field(default_factory=dict)

    def mirror_dir(self) -> Path | None:
        """MEDOPS_MIRROR wins over params so CI and tests can point at a shared folder."""
        value = os.environ.get(MIRROR_ENV) or self.mirror
        return Path(value).expanduser() if value else None


class ValidationParams(_Strict):
    # Share of constant (blank) images allowed in any split.
    max_blank_fraction: float = Field(0.01, ge=0, le=1)
    # Share of a val/test split allowed to repeat an image of another split (leakage).
    max_leak_fraction: float = Field(0.02, ge=0, le=1)


class EdaParams(_Strict):
    samples_per_class: int = Field(8, ge=1, le=32)
    seed: int = 0


class AugmentParams(_Strict):
    """Batched, on-device augmentation. 2D: affine + flips; 3D: flips + 90-degree turns."""

    enabled: bool = True
    rotation: float = Field(10.0, ge=0, le=180)  # degrees, uniform in [-r, r]
    shift: float = Field(0.05, ge=0, le=0.5)  # fraction of the image side
    zoom: float = Field(0.05, ge=0, le=0.5)  # scale uniform in [1-z, 1+z]
    hflip: float = Field(0.5, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)
    rot90: bool = True  # 3D only: random multiples of 90 degrees in-plane


class TransferParams(_Strict):
    weights: str = "none"  # imagenet | none | path to a state dict
    finetune: Literal["frozen", "partial", "full"] = "full"
    resize_to: int = Field(64, ge=28)


class TrainParams(_Strict):
    arch: str = "baseline_cnn"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1)  # step schedule: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)  # max gradient norm; null turns clipping off
    patience: int = Field(8, ge=1)  # early stopping: epochs without improvement
    monitor: Literal["auc", "acc", "loss"] = "auc"  # validation metric for selection
    weighted_loss: bool = True  # class weights from the preprocess stage
    dropout: float | None = Field(None, ge=0, lt=1)  # null: the architecture's default
    augment: AugmentParams = Field(default_factory=AugmentParams)
    transfer: TransferParams = Field(default_factory=TransferParams)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision, CUDA only
    resume: bool = True  # continue from the last checkpoint of an identical run


class Params(_Strict):
    # Sections later stages own are kept as plain dicts until their modules type them.
    model_config = ConfigDict(extra="allow")

    data: DataParams = Field(default_factory=DataParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    eda: EdaParams = Field(default_factory=EdaParams)
    train: TrainParams = Field(default_factory=TrainParams)

    def dataset(self, flag: str) -> DatasetParams:
        try:
            return self.data.datasets[flag]
        except KeyError:
            known = ", ".join(sorted(self.data.datasets)) or "(none)"
            raise ConfigError(
                f"dataset {flag!r} is not listed under data.datasets in params.yaml; listed: {known}"
            ) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    from medops.data.info import resolve  # local import: info pulls in medmnist

    for flag, ds in params.data.datasets.items():
        resolve(flag, ds.size)  # unknown flags and sizes fail here, before any work
    return params


def validate_section(model: type[BaseModel], data: dict, name: str):
    """Validate one section (e.g. after command-line overrides) with params-style messages."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc).replace("\n  ", f"\n  {name}.")) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "invalid parameters:\n  " + "\n  ".join(lines)
