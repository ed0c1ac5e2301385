"""What medmnist.INFO says about a (flag, size): the only source of dataset facts.

Nothing in the pipeline depends on a dataset's name beyond what INFO records.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import medmnist
from medmnist import INFO

from medops.errors import ConfigError
from medops.task_rules import BINARY, MULTI_LABEL, ORDINAL  # noqa: F401 - the task types INFO names

SPLITS = ("train", "val", "test")


def _available_sizes(flag: str) -> list[int]:
    cls = getattr(medmnist, INFO[flag]["python_class"])
    return list(cls.available_sizes)


@dataclass(frozen=True)
class DatasetSpec:
    flag: str
    size: int

    @property
    def info(self) -> dict:
        return INFO[self.flag]

    @property
    def size_suffix(self) -> str:
        return "" if self.size == 28 else f"_{self.size}"

    @property
    def filename(self) -> str:
        """File name as medmnist and the official record spell it."""
        return f"{self.flag}{self.size_suffix}.npz"

    @property
    def md5(self) -> str:
        return self.info[f"MD5{self.size_suffix}"]

    @property
    def url(self) -> str:
        return self.info[f"url{self.size_suffix}"]

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def n_channels(self) -> int:
        return int(self.info["n_channels"])

    @cached_property
    def class_names(self) -> list[str]:
        labels = self.info["label"]
        return [labels[str(i)] for i in range(len(labels))]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_3d(self) -> bool:
        return issubclass(getattr(medmnist, self.info["python_class"]), medmnist.dataset.MedMNIST3D)

    @property
    def n_samples(self) -> dict[str, int]:
        return dict(self.info["n_samples"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image as stored in the npz (channels last, absent for 1 channel)."""
        spatial = (self.size,) * (3 if self.is_3d else 2)
        return spatial + ((self.n_channels,) if self.n_channels > 1 else ())

    @property
    def label_width(self) -> int:
        """Columns of the label array: one per label for multi-label, else one."""
        return self.n_classes if self.task == MULTI_LABEL else 1


def resolve(flag: str, size: int = 28) -> DatasetSpec:
    """Check a flag and size against INFO; errors list what is valid."""
    if not isinstance(flag, str) or flag not in INFO:
        valid = ", ".join(sorted(INFO))
        raise ConfigError(f"unknown MedMNIST flag {flag!r}; valid flags: {valid}")
    sizes = _available_sizes(flag)
    if size not in sizes:
        raise ConfigError(
            f"size {size!r} is not published for {flag}; available sizes: "
            + ", ".join(map(str, sizes))
        )
    return DatasetSpec(flag, int(size))
