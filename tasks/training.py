"""Prefect tasks over medops.pipeline: retries only where a retry can help."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from medops.config import load_params
from medops.pipeline import (promote_dataset, run_experiment, summary_from_registry, write_model_card,
                             write_training_metrics)


@task(name="study", task_run_name="study-{flag}-{arch}", retries=0)
def study(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """Optuna study + final evaluation + registration. No retry: the study itself resumes."""
    return run_experiment(flag, arch, load_params(Path(params_path)))


@task(name="promote", task_run_name="promote-{flag}", retries=2, retry_delay_seconds=5)
def promote(flag: str, params_path: str = "params.yaml") -> dict:
    """The promotion gate; retried because a tracking server can blink."""
    return promote_dataset(flag, load_params(Path(params_path)))


@task(name="registered-summary", task_run_name="summary-{flag}-{arch}", retries=2, retry_delay_seconds=5)
def registered_summary(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """A study's outcome as the registry records it (pool mode: the study ran elsewhere)."""
    return summary_from_registry(flag, arch, load_params(Path(params_path)))


@task(name="training-metrics", task_run_name="metrics-{flag}")
def training_metrics(flag: str, summaries: dict, promotion: dict | None) -> str:
    return str(write_training_metrics(flag, summaries, promotion))


@task(name="model-card", task_run_name="model-card-{flag}", retries=2, retry_delay_seconds=5)
def model_card(flag: str, promotion: dict | None, params_path: str = "params.yaml") -> str:
    """reports/<flag>/model_card.md, attached to the registered versions (retried: tracking calls)."""
    return str(write_model_card(flag, load_params(Path(params_path)), promotion))
