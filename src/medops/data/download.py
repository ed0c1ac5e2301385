"""download stage: fetch one MedMNIST file into data/raw, md5-verified.

A local mirror folder is tried first (MEDOPS_MIRROR or data.mirror); otherwise medmnist's
own download from the official record. The target is replaced only by a verified file.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from medops import paths
from medops.config import DatasetParams
from medops.data.info import DatasetSpec, resolve
from medops.data.npz import load_arrays
from medops.errors import DataError
from medops.files import atomic_path, ensure_dir

log = logging.getLogger(__name__)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, spec: DatasetSpec) -> None:
    actual = md5sum(path)
    if actual != spec.md5:
        raise DataError(
            f"{path}: md5 {actual} does not match the official {spec.filename} "
            f"(expected {spec.md5} from medmnist.INFO['{spec.flag}']); the file is damaged "
            "or not the published one. Nothing was overwritten."
        )


def _official_download(spec: DatasetSpec, workdir: Path) -> Path:
    """medmnist's own download (torchvision download_url with md5 check) into workdir."""
    import medmnist  # imports torch: only when there is no mirror to copy from

    cls = getattr(medmnist, spec.info["python_class"])
    log.info("downloading %s from %s", spec.filename, spec.url)
    try:
        cls(split="train", download=True, root=str(workdir), size=spec.size)
    except Exception as exc:  # medmnist wraps every failure in a bare RuntimeError
        raise DataError(
            f"could not download {spec.filename} from {spec.url}: {str(exc).strip().splitlines()[0]}"
            f"\n  Offline? Put the official file in a folder and set MEDOPS_MIRROR to it."
        ) from None
    return workdir / spec.filename


def download(flag: str, ds: DatasetParams, mirror: Path | None, out: Path | None = None) -> Path:
    """Place a verified copy of the dataset file at ``out`` (default data/raw/<flag>.npz)."""
    spec = resolve(flag, ds.size)
    out = Path(out or paths.raw_file(flag))
    official = ds.source == "official"
    candidate = mirror / spec.filename if mirror else None

    if candidate is not None and candidate.exists():
        source = candidate
        log.info("using mirror copy %s", source)
    elif not official:
        where = candidate or "(no mirror set: set MEDOPS_MIRROR or data.mirror)"
        raise DataError(f"{flag}: source is 'custom' but {where} does not exist")
    else:
        if candidate is not None:
            log.info("%s not in mirror %s; trying the official record", spec.filename, mirror)
        source = None

    with tempfile.TemporaryDirectory(prefix=".download-", dir=ensure_dir(out.parent)) as work:
        if source is None:
            source = _official_download(spec, Path(work))
        if official:
            verify_md5(source, spec)
        load_arrays(source)  # a custom file must at least be a complete MedMNIST npz
        with atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
    return out
