"""What medmnist.INFO says about a (flag, size): the only source of dataset facts.

Nothing in the pipeline depends on a dataset's name beyond what INFO records. The data stages
run without torch: importing the `medmnist` package imports its torch datasets, so INFO is read
from `medmnist/info.py` alone, and which classes are 3D from the class definitions in
`medmnist/dataset.py`, read, not imported.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from medops.errors import ConfigError

# Task types as medmnist.INFO spells them (multi-class is every other one).
BINARY, MULTI_LABEL, ORDINAL = "binary-class", "multi-label, binary-class", "ordinal-regression"
TASK_TYPES = (BINARY, "multi-class", MULTI_LABEL, ORDINAL)
SPLITS = ("train", "val", "test")
SIDES = ("left", "right")
SIZES = (28, 64, 128, 224)


def _medmnist_file(name: str) -> Path:
    spec = importlib.util.find_spec("medmnist")  # locates the package without running its __init__
    return Path(spec.submodule_search_locations[0]) / name


def _info() -> dict:
    if "medmnist.info" in sys.modules:  # torch is loaded anyway: the package's own module
        return sys.modules["medmnist.info"].INFO
    spec = importlib.util.spec_from_file_location("_medmnist_info", _medmnist_file("info.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INFO


@cache
def _classes_3d() -> frozenset[str]:
    """Names of medmnist's dataset classes that derive (at any depth) from MedMNIST3D, read from
    the top-level class statements of its source. Not with `ast.parse`: in a threaded process
    CPython 3.11 can fail it spuriously with "AST constructor recursion depth mismatch"
    (python/cpython#106905), which stopped a training flow here with Prefect's threads running."""
    source = _medmnist_file("dataset.py").read_text()
    bases = {name: [b.strip() for b in listed.split(",") if b.strip()]
             for name, listed in re.findall(r"^class\s+(\w+)\s*(?:\(([^)]*)\))?\s*:", source, re.MULTILINE)}

    def is_3d(name: str) -> bool:
        return name == "MedMNIST3D" or any(is_3d(b) for b in bases.get(name, ()))

    return frozenset(name for name in bases if is_3d(name))


INFO = _info()


def _available_sizes(flag: str) -> list[int]:
    """28 px always; the larger sizes INFO lists a file (url and md5) for."""
    return [s for s in SIZES if s == 28 or f"MD5_{s}" in INFO[flag]]


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
    def sided(self) -> bool:
        """Some class names a body side (OrganMNIST's kidney-left / kidney-right): a mirrored
        image then shows another class, so mirroring is no augmentation for this set."""
        return any(word in SIDES for name in self.class_names for word in re.split(r"[^a-z]+", name.lower()))

    @property
    def is_3d(self) -> bool:
        return self.info["python_class"] in _classes_3d()

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
