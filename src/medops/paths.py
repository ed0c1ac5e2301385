"""Where each stage reads and writes, relative to the project root (as dvc.yaml says)."""

from __future__ import annotations

import os
from pathlib import Path

RAW = Path("data/raw")
PROCESSED = Path("data/processed")
REPORTS = Path("reports")


def raw_file(flag: str) -> Path:
    return RAW / f"{flag}.npz"


def processed_dir(flag: str) -> Path:
    return PROCESSED / flag


def validation_dir(flag: str) -> Path:
    return REPORTS / flag / "validation"


def failed_validation_dir(flag: str) -> Path:
    """A failed run's report goes here, so the last good one under validation/ stays."""
    return REPORTS / flag / "validation-failed"


def data_stats_file(flag: str) -> Path:
    return REPORTS / flag / "data_stats.json"


def eda_dir(flag: str) -> Path:
    return REPORTS / flag / "eda"


MODELS = Path("models")


def model_dir(flag: str, arch: str) -> Path:
    """Checkpoints of one (dataset, architecture): best.pt and last.pt (for resume)."""
    return MODELS / flag / arch


def run_reports_dir(flag: str, arch: str) -> Path:
    return REPORTS / flag / arch


def trials_dir(flag: str, arch: str) -> Path:
    return MODELS / flag / arch / "trials"


def training_dir(flag: str) -> Path:
    """Per-architecture final metrics and plots of a dataset (DVC plots)."""
    return REPORTS / flag / "training"


def training_metrics_file(flag: str) -> Path:
    """Val/test AUC and ACC of every architecture of a dataset (DVC metrics)."""
    return REPORTS / flag / "training.json"


def model_card_file(flag: str) -> Path:
    return REPORTS / flag / "model_card.md"


def optuna_storage(configured: str | None = None) -> str:
    """The Optuna storage URL: MEDOPS_OPTUNA_STORAGE, else tune.storage, else SQLite under mlruns/.
    The environment wins so that credentials and per-host addresses stay out of params.yaml."""
    return os.environ.get("MEDOPS_OPTUNA_STORAGE") or configured or f"sqlite:///{(Path('mlruns') / 'optuna.db').resolve()}"
