"""Prefect tasks over medops.pipeline, one per stage of a (dataset, architecture) study: each
shows in the UI with its own state, duration and logs. Retries only where a retry can help
(calls to a tracking server that can blink); the compute stages resume by themselves instead
(Optuna, checkpoints, stage records)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from medops import pipeline
from medops.config import load_params


def _params(params_path: str):
    return load_params(Path(params_path))


@task(name="tune", task_run_name="tune-{flag}-{arch}")
def tune(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """The Optuna study; a rerun continues it (finished trials are kept)."""
    return pipeline.tune(flag, arch, _params(params_path))


@task(name="tune-more", task_run_name="tune-more-{flag}-{arch}")
def tune_more(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """More trials of the same study beside the run that finishes it (tune.workers_per_study)."""
    return pipeline.tune_more(flag, arch, _params(params_path))


@task(name="seeds", task_run_name="seeds-{flag}-{arch}")
def seeds(flag: str, arch: str, tuned: dict, params_path: str = "params.yaml") -> dict:
    return pipeline.seeds(flag, arch, _params(params_path), tuned)


@task(name="evaluate", task_run_name="evaluate-{flag}-{arch}")
def evaluate(flag: str, arch: str, tuned: dict, seeded: dict, params_path: str = "params.yaml") -> dict:
    """The registered form, chosen on validation, evaluated on val and test once."""
    return pipeline.evaluate(flag, arch, _params(params_path), tuned, seeded)


@task(name="explain", task_run_name="explain-{flag}-{arch}")
def explain(flag: str, arch: str, tuned: dict, params_path: str = "params.yaml") -> dict:
    return pipeline.explain(flag, arch, _params(params_path), tuned)


@task(name="quantize", task_run_name="quantize-{flag}-{arch}")
def quantize(flag: str, arch: str, evaluated: dict, params_path: str = "params.yaml") -> dict:
    return pipeline.quantize(flag, arch, _params(params_path), evaluated)


@task(name="register", task_run_name="register-{flag}-{arch}", retries=2, retry_delay_seconds=5)
def register(flag: str, arch: str, tuned: dict, seeded: dict, evaluated: dict, explained: dict, quantized: dict,
             params_path: str = "params.yaml") -> dict:
    """Log and register, idempotently (a retry or rerun never makes a second version)."""
    return pipeline.register(flag, arch, _params(params_path), tuned, seeded, evaluated, explained, quantized)


def study_stages(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """The stage tasks of one (dataset, architecture), in order; inside a flow."""
    tuned = tune(flag, arch, params_path)
    seeded = seeds(flag, arch, tuned, params_path)
    evaluated = evaluate(flag, arch, tuned, seeded, params_path)
    explained = explain(flag, arch, tuned, params_path)
    quantized = quantize(flag, arch, evaluated, params_path)
    return register(flag, arch, tuned, seeded, evaluated, explained, quantized, params_path)
