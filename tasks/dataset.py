"""Prefect tasks over medops.dataset_stages, run once per dataset after its studies (in pool mode
on the orchestrating host, which imports no torch for them). The ones that call the tracking
server are retried: it can blink."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from medops import dataset_stages
from medops.config import load_params


def _params(params_path: str):
    return load_params(Path(params_path))


@task(name="promote", task_run_name="promote-{flag}", retries=2, retry_delay_seconds=5)
def promote(flag: str, params_path: str = "params.yaml") -> dict:
    """The promotion gate; retried because a tracking server can blink."""
    return dataset_stages.promote_dataset(flag, _params(params_path))


@task(name="registered-summary", task_run_name="summary-{flag}-{arch}", retries=2, retry_delay_seconds=5)
def registered_summary(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """A study's outcome as the registry records it (pool mode: the study ran elsewhere)."""
    return dataset_stages.summary_from_registry(flag, arch, _params(params_path))


@task(name="training-metrics", task_run_name="metrics-{flag}")
def training_metrics(flag: str, summaries: dict, promotion: dict | None) -> str:
    return str(dataset_stages.write_training_metrics(flag, summaries, promotion))


@task(name="model-card", task_run_name="model-card-{flag}", retries=2, retry_delay_seconds=5)
def model_card(flag: str, promotion: dict | None, params_path: str = "params.yaml") -> str:
    """reports/<flag>/model_card.md, attached to the registered versions (retried: tracking calls)."""
    return str(dataset_stages.write_model_card(flag, _params(params_path), promotion))
