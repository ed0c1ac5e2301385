"""A store every worker reaches for what a later step or another host needs:
`orchestration.checkpoint_store`, any fsspec URL (s3://bucket/medops, gs://..., a shared file://
folder); MEDOPS_CHECKPOINT_STORE overrides it. A trial pushes last.pt and best.pt after each
epoch, a trial resumed on another host pulls them first, and the run that finishes a study pulls
its best trial's. Each finished pipeline stage pushes its record and the files it names (seed
checkpoints, plots, the int8 file) under project/<path>, so a study finished on one host is
reused, not redone, on another. Without a store everything stays on the host that made it,
which is all one machine needs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import fsspec

from medops.errors import MedopsError, redact
from medops.files import atomic_path

log = logging.getLogger(__name__)
FILES = ("best.pt", "last.pt")


class CheckpointStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def _remote(self, key: str, name: str) -> str:
        return f"{self.root.rstrip('/')}/{key}/{name}"

    def _put(self, local: Path, remote: str) -> None:
        """One file, landing whole or not at all."""
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote + ".partial")
        self.fs.mv(remote + ".partial", remote)

    def _get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(local) as tmp:
            self.fs.get_file(remote, str(tmp))

    def push(self, folder: Path, key: str) -> None:
        """Upload the folder's checkpoints under `key`."""
        for name in FILES:
            if (folder / name).exists():
                self._put(folder / name, self._remote(key, name))

    def pull(self, key: str, folder: Path) -> list[str]:
        """Download what the store holds under `key` into folder (replacing local copies)."""
        pulled = []
        for name in FILES:
            remote = self._remote(key, name)
            if self.fs.exists(remote):
                self._get(remote, folder / name)
                pulled.append(name)
        if pulled:
            log.info("pulled %s of %s from %s", ", ".join(pulled), key, redact(self.url))
        return pulled

    def push_paths(self, paths: list[Path]) -> None:
        """Project files and folders (paths relative to the project) under project/<path>."""
        for path in paths:
            for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
                self._put(f, self._remote("project", f.as_posix()))

    def read(self, path: Path) -> bytes | None:
        """A project file's bytes as push_paths uploaded them, or None."""
        remote = self._remote("project", path.as_posix())
        return self.fs.cat_file(remote) if self.fs.exists(remote) else None

    def pull_paths(self, paths: list[Path]) -> bool:
        """The files and folders push_paths uploaded, into the project; False (and nothing
        written) when the store lacks one of them."""
        found = {}
        for path in paths:
            remote = self._remote("project", path.as_posix())
            if self.fs.isdir(remote):
                root = remote.rstrip("/")
                for f in self.fs.find(remote):
                    if not f.endswith(".partial"):
                        found[f] = path / f.rstrip("/")[len(root) + 1:]
            elif self.fs.exists(remote):
                found[remote] = path
            else:
                return False
        for remote, local in found.items():
            self._get(remote, local)
        return True


def open_store(configured: str | None) -> CheckpointStore | None:
    url = os.environ.get("MEDOPS_CHECKPOINT_STORE") or configured
    if not url:
        return None
    try:
        return CheckpointStore(url)
    except (ImportError, ValueError) as exc:  # an fsspec protocol whose package is not installed
        raise MedopsError(f"checkpoint store {redact(url)}: {exc}") from None
