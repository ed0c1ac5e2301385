"""Images from files for `medops predict` and `medops explain`: .npz/.npy arrays in the MedMNIST
layout, or PNG/JPEG files. Nothing is resized: an image of another size is an error that says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medops.errors import DataError

PICTURES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _array_file(path: Path, key: str | None) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if key is None:
                key = "images" if "images" in keys else "test_images" if "test_images" in keys else (
                    keys[0] if len(keys) == 1 else None)
            if key not in keys:
                raise DataError(f"{path}: say which array to use with --key; it holds {', '.join(keys)}")
            return npz[key]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable numpy file ({str(exc).splitlines()[0]})") from None


def _picture(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] != 3):
        raise DataError(f"{path}: this model takes volumes {shape}; pass them as .npy/.npz, not as pictures")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if len(shape) == 2 else "RGB")
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if array.shape != shape:
        raise DataError(f"{path}: image is {array.shape[1]}x{array.shape[0]}, the model takes "
                        f"{shape[1]}x{shape[0]} (MedMNIST size); resize it first")
    return array


def load_images(files: list[Path], shape: tuple[int, ...], key: str | None = None) -> tuple[np.ndarray, list[str]]:
    """A batch in the npz layout plus one name per image ('file' or 'file[i]')."""
    batches, names = [], []
    for path in map(Path, files):
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if path.suffix.lower() in PICTURES:
            batches.append(_picture(path, shape)[None])
            names.append(path.name)
            continue
        if path.suffix not in (".npz", ".npy"):
            raise DataError(f"{path}: expected .npz, .npy or a picture ({', '.join(sorted(PICTURES))})")
        array = _array_file(path, key)
        if array.shape == shape:
            array = array[None]
        if array.shape[1:] != shape:
            raise DataError(f"{path}: images of shape {array.shape[1:] or array.shape}, the model takes {shape}")
        batches.append(array)
        names += [f"{path.name}[{i}]" for i in range(len(array))]
    if not batches:
        raise DataError("no images given")
    return np.concatenate(batches), names
