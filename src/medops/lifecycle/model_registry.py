"""The MLflow model registry: one registered model per dataset, promoted by alias.

`challenger` marks the best eligible version by validation metric; it takes `champion`
only if there is none or it beats the champion by promotion.min_delta. Every move is
recorded in tags on the version that moved, so the history can be audited (and rolled
back) from the registry alone. A version that failed evaluation is never eligible.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from medops.errors import MedopsError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
BUILD_KEY = "build_key"  # what a version was built from: study, trial, recipe and data, form


def model_name(flag: str) -> str:
    return f"{flag}-classifier"


def int8_model_name(flag: str) -> str:
    return f"{flag}-classifier-int8"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def register(flag: str, model_uri: str, run_id: str, tags: dict[str, str], name: str | None = None,
             about: dict[str, str] | None = None) -> ModelVersion:
    """One new version, tags set in the same call (no half-tagged version), then READY. `about`
    (task, classes, input layout) describes the registered model itself in the registry's list."""
    client = MlflowClient()
    name = name or model_name(flag)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    if about:
        describe(name, flag, about)
    # a logged model's URI (models:/m-<id>) names its LoggedModel; a tracking server needs the id
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
    for _ in range(60):
        version = client.get_model_version(name, version.version)
        if version.status == "READY":
            return version
        time.sleep(1)
    raise MedopsError(f"{name} version {version.version} did not become READY")


def describe(name: str, flag: str, about: dict[str, str]) -> None:
    """The registered model's description and tags, as the registry's list shows them; only
    what differs is written (a rerun that registers nothing still brings an old model's text up
    to date)."""
    client = MlflowClient()
    model = client.get_registered_model(name)
    int8 = name == int8_model_name(flag)
    what = "int8 ONNX twin of the champion classifier" if int8 else "classifier (MLflow pyfunc)"
    description = (f"MedMNIST {flag} {what}: {about['task']} task, {about['n_classes']} classes ({about['classes']}); "
                   f"input {about['input']}. Promoted by alias: `champion` serves, `challenger` is the newest "
                   "candidate.")
    if model.description != description:
        client.update_registered_model(name, description=description)
    tags = {**{key: about[key] for key in ("task", "n_classes", "input")}, "flag": flag}
    for key, value in tags.items():
        if model.tags.get(key) != value:
            client.set_registered_model_tag(name, key, value)


def find_version(name: str, build_key: str) -> ModelVersion | None:
    """The version of `name` built from exactly this (build_key tag), if one was registered."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}' and tags.{BUILD_KEY} = '{build_key}'")
    except MlflowException:
        return None  # no such registered model yet
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _metric(version: ModelVersion, metric: str) -> float:
    """A version's validation metric from its tags; auc+acc is the mean of the two."""
    parts = metric.split("+")
    value = sum(float(version.tags.get(f"val_{part}", "nan")) for part in parts) / len(parts)
    return -math.inf if math.isnan(value) else value


@dataclass
class Promotion:
    name: str
    challenger: str | None
    champion: str | None
    previous_champion: str | None
    moved: bool
    reason: str


def promote(flag: str, metric: str = "auc", min_delta: float = 0.0) -> Promotion:
    client = MlflowClient()
    name = model_name(flag)
    versions = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("eligible") == "true"]
    if not versions:
        raise MedopsError(f"{name}: no eligible version to promote (each must pass evaluation)")
    best = max(versions, key=lambda v: (_metric(v, metric), int(v.version)))
    client.set_registered_model_alias(name, CHALLENGER, best.version)
    champion = _alias(client, name, CHAMPION)
    value = _metric(best, metric)
    if champion is not None and champion.version == best.version:
        return Promotion(name, best.version, champion.version, None, False, "challenger is already champion")
    if champion is not None and not value > _metric(champion, metric) + min_delta:
        reason = (f"challenger v{best.version} val_{metric} {value:.4f} does not beat champion "
                  f"v{champion.version} {_metric(champion, metric):.4f} by {min_delta}")
        log.info("%s: %s", name, reason)
        return Promotion(name, best.version, champion.version, None, False, reason)
    previous = champion.version if champion else None
    _move_champion(client, name, best.version, previous,
                   f"val_{metric} {value:.4f}" + (f" > {_metric(champion, metric):.4f} + {min_delta}" if champion else
                                                  " (no champion yet)"))
    return Promotion(name, best.version, best.version, previous, True, "promoted")


def _move_champion(client: MlflowClient, name: str, version: str, previous: str | None, why: str) -> None:
    # tags first: if the alias move fails, the version says what was attempted, and champion stays
    client.set_model_version_tag(name, version, "promoted_at", _now())
    client.set_model_version_tag(name, version, "previous_champion", previous or "none")
    client.set_model_version_tag(name, version, "promotion_reason", why)
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info("%s: champion -> v%s (%s)", name, version, why)
    sync_int8(client, name, version)


def sync_int8(client: MlflowClient, name: str, version: str) -> None:
    """`<flag>-classifier-int8@champion` follows the fp32 champion: the int8 version made from it,
    or no alias when that model has none (quantization failed its gate)."""
    int8 = f"{name}-int8"
    try:
        versions = client.search_model_versions(f"name='{int8}'")
    except MlflowException:
        return
    match = [v for v in versions if v.tags.get("fp32_version") == str(version)]
    if match:
        client.set_registered_model_alias(int8, CHAMPION, max(match, key=lambda v: int(v.version)).version)
    elif _alias(client, int8, CHAMPION) is not None:
        client.delete_registered_model_alias(int8, CHAMPION)


def set_champion(flag: str, version: str) -> Promotion:
    """A person's decision: make `version` champion (it must exist and be eligible)."""
    client = MlflowClient()
    name = model_name(flag)
    try:
        target = client.get_model_version(name, str(version))
    except MlflowException:
        raise MedopsError(f"{name} has no version {version}") from None
    if target.tags.get("eligible") != "true":
        raise MedopsError(f"{name} v{version} is not eligible (it did not pass evaluation); champion not moved")
    current = _alias(client, name, CHAMPION)
    if current is not None and current.version == target.version:
        return Promotion(name, None, target.version, None, False, "already champion")
    previous = current.version if current else None
    _move_champion(client, name, target.version, previous, "set by hand")
    return Promotion(name, None, target.version, previous, True, "set by hand")


def rollback(flag: str) -> Promotion:
    """Give `champion` back to the version the current champion replaced."""
    client = MlflowClient()
    name = model_name(flag)
    current = _alias(client, name, CHAMPION)
    if current is None:
        raise MedopsError(f"{name}: there is no champion to roll back")
    previous = current.tags.get("previous_champion", "none")
    if previous == "none":
        raise MedopsError(f"{name}: champion v{current.version} replaced no earlier champion; nothing to roll back to")
    client.set_model_version_tag(name, current.version, "rolled_back_at", _now())
    client.set_model_version_tag(name, previous, "restored_at", _now())
    client.set_registered_model_alias(name, CHAMPION, previous)
    sync_int8(client, name, previous)
    log.info("%s: champion rolled back v%s -> v%s", name, current.version, previous)
    return Promotion(name, None, previous, current.version, True, "rolled back")
