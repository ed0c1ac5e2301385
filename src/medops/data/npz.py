"""Read a MedMNIST npz file, turning every way it can be broken into a clear error."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medops.data.info import SPLITS
from medops.errors import DataError

KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))


def load_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """All six arrays of a MedMNIST file, read fully into memory.

    Content (dtype, shapes, ranges) is judged by validation, not here: this only makes
    sure the file is a readable npz with the six keys and no pickled objects.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(missing)}; a MedMNIST file has "
                    + ", ".join(KEYS)
                )
            return {k: npz[k] for k in KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz file (truncated or corrupt?): {exc}") from None
