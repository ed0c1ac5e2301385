"""Rebuild flow: `dvc repro` for scheduled retraining (nightly by default, see prefect.yaml)."""

from __future__ import annotations

from prefect import flow

from tasks.dvc import dvc_repro


@flow(name="medops-rebuild")
def rebuild_flow(targets: list[str] | None = None, project_dir: str = ".") -> str:
    return dvc_repro(targets, cwd=project_dir)


if __name__ == "__main__":
    rebuild_flow()
