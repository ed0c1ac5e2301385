"""The one task that runs DVC: no other code starts DVC commands, so none run concurrently."""

from __future__ import annotations

import subprocess

from prefect import get_run_logger, task


@task(name="dvc-repro", retries=0)
def dvc_repro(targets: list[str] | None = None, cwd: str = ".") -> str:
    logger = get_run_logger()
    cmd = ["dvc", "repro", *(targets or [])]
    logger.info("running %s in %s", " ".join(cmd), cwd)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    logger.info(proc.stdout[-4000:])
    if proc.returncode:
        raise RuntimeError(f"dvc repro failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
