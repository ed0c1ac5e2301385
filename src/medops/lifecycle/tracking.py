"""MLflow: where runs go, what they record, and how credentials stay out of logs."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
import yaml

from medops.config import MlflowParams
from medops.errors import MedopsError, redact

log = logging.getLogger(__name__)

MLRUNS = Path("mlruns")
# Bounded retries against a remote tracking server (MLflow's defaults wait minutes).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(params: MlflowParams) -> str:
    return (os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
            or f"sqlite:///{(MLRUNS / 'mlflow.db').resolve()}")


def configure(params: MlflowParams) -> str:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(params: MlflowParams, flag: str) -> str:
    """One MLflow experiment per dataset; local stores keep artifacts under mlruns/artifacts."""
    name = f"{params.experiment_prefix}/{flag}"
    try:
        existing = mlflow.get_experiment_by_name(name)
    except Exception as exc:  # requests' ConnectionError, MlflowException after retries...
        raise MedopsError(redact(
            f"MLflow tracking at {mlflow.get_tracking_uri()} is unreachable "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); nothing was logged or registered"
        )) from None
    if existing is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite"):
            location = (MLRUNS / "artifacts" / flag).resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            if mlflow.get_experiment_by_name(name) is None:
                raise
    return mlflow.set_experiment(name).experiment_id


class TrialRuns:
    """Nested MLflow runs for Optuna trials under a study's parent run."""

    def __init__(self, parent_run_id: str, tags: dict[str, str]):
        self.parent_run_id = parent_run_id
        self.tags = tags

    @contextlib.contextmanager
    def trial(self, number: int, params: dict) -> Iterator[Callable[[int, dict], None]]:
        with mlflow.start_run(run_name=f"trial-{number}", nested=True, parent_run_id=self.parent_run_id,
                              tags={**self.tags, "optuna_trial": str(number)}) as run:
            mlflow.log_params(params)

            def log_epoch(epoch: int, record: dict) -> None:
                mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

            try:
                yield log_epoch
            except BaseException as exc:
                pruned = type(exc).__name__ == "TrialPruned"
                mlflow.set_tag("trial_state", "pruned" if pruned else "failed")
                mlflow.set_tag("trial_error", str(exc)[:500])
                mlflow.end_run("FINISHED" if pruned else "FAILED")
                raise
            mlflow.set_tag("trial_state", "complete")
            log.debug("trial run %s finished", run.info.run_id)

    def describe(self, facts: dict[str, str]) -> None:
        """Tags of the active trial run: which runs of a study ran in bf16 or on a GPU."""
        mlflow.set_tags(facts)


def package_versions() -> dict[str, str]:
    names = ["medops", "torch", "torchvision", "medmnist", "mlflow", "optuna", "prefect", "dvc", "great-expectations"]
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        # dvc.lock is rewritten by the running pipeline itself: not a change to the code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def dvc_lock_md5(path: str, lock: Path = Path("dvc.lock")) -> str:
    """The md5 dvc.lock records for an output (the processed data a model was trained on)."""
    if not lock.exists():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == path:
                return out.get("md5", "unknown")
    return "unknown"
