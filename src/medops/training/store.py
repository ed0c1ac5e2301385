"""Trial checkpoints in a store every worker reaches: `orchestration.checkpoint_store`, any
fsspec URL (s3://bucket/medops, gs://..., a shared file:// folder); MEDOPS_CHECKPOINT_STORE
overrides it. A trial pushes last.pt and best.pt after each epoch, a trial resumed on another
host pulls them first, and the run that finishes a study pulls its best trial's. Without a store
checkpoints stay on the host that made them, which is all one machine needs.
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

    def push(self, folder: Path, key: str) -> None:
        """Upload the folder's checkpoints under `key`; each lands whole or not at all."""
        for name in FILES:
            local = folder / name
            if local.exists():
                remote = self._remote(key, name)
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(local), remote + ".partial")
                self.fs.mv(remote + ".partial", remote)

    def pull(self, key: str, folder: Path) -> list[str]:
        """Download what the store holds under `key` into folder (replacing local copies)."""
        pulled = []
        for name in FILES:
            remote = self._remote(key, name)
            if self.fs.exists(remote):
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(folder / name) as tmp:
                    self.fs.get_file(remote, str(tmp))
                pulled.append(name)
        if pulled:
            log.info("pulled %s of %s from %s", ", ".join(pulled), key, redact(self.url))
        return pulled


def open_store(configured: str | None) -> CheckpointStore | None:
    url = os.environ.get("MEDOPS_CHECKPOINT_STORE") or configured
    if not url:
        return None
    try:
        return CheckpointStore(url)
    except (ImportError, ValueError) as exc:  # an fsspec protocol whose package is not installed
        raise MedopsError(f"checkpoint store {redact(url)}: {exc}") from None
