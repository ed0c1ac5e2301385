"""The per-dataset stages, after every study of the dataset: what each study registered, the
promotion gate, the training metrics and the model card. They talk to the tracking server and
write reports; they import no torch, so the host that orchestrates pool mode starts in seconds
and needs no training stack of its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow

from medops import paths
from medops.config import Params
from medops.errors import MedopsError
from medops.files import atomic_dir, write_json
from medops.lifecycle import model_card
from medops.lifecycle import model_registry as registry
from medops.lifecycle import tracking
from medops.lifecycle.dvc_plots import write_dvc_plots


def summary_from_registry(flag: str, arch: str, params: Params) -> dict:
    """The newest registered version of (flag, arch) as a study summary: how the flow learns a
    study's outcome when a worker on another host ran it (the registry is what they share). The
    study's report folder comes back from its MLflow run into reports/<flag>/training/<arch>, so
    this host's DVC outputs and model card hold what the other host trained."""
    from mlflow import MlflowClient

    tracking.configure(params.mlflow)
    name = registry.model_name(flag)
    versions = [v for v in MlflowClient().search_model_versions(f"name='{name}'") if v.tags.get("arch") == arch]
    if not versions:
        raise MedopsError(f"{name}: no version of {arch} was registered by the study")
    v = max(versions, key=lambda v: int(v.version))
    with tempfile.TemporaryDirectory() as tmp:
        logged = Path(mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path="evaluation", dst_path=tmp))
        summary = json.loads((logged / "metrics.json").read_text())
        summary["registered_version"] = v.version  # logged before the version existed
        int8 = registry.find_version(registry.int8_model_name(flag), v.tags.get(registry.BUILD_KEY, ""))
        if int8 is not None:
            summary["int8_version"] = int8.version
        with atomic_dir(paths.training_dir(flag) / arch) as out:
            for f in logged.iterdir():
                shutil.copy2(f, out / f.name)
            write_json(out / "metrics.json", summary)
    return summary


def promote_dataset(flag: str, params: Params) -> dict:
    tracking.configure(params.mlflow)
    result = registry.promote(flag, params.promotion.metric, params.promotion.min_delta)
    return result.__dict__


def write_model_card(flag: str, params: Params, promotion: dict | None) -> Path:
    tracking.configure(params.mlflow)
    return model_card.write_and_attach(flag, params, promotion and promotion.get("champion"))


def write_training_metrics(flag: str, summaries: dict[str, dict], promotion: dict | None) -> Path:
    """reports/<flag>/training.json: one entry per architecture (DVC metrics), and the plot data
    of reports/<flag>/plots (DVC plots)."""
    data = {
        arch: {"val_auc": s["val"]["auc"], "val_acc": s["val"]["acc"], "test_auc": s["test"]["auc"],
               "test_acc": s["test"]["acc"], "version": int(s["registered_version"])}
        for arch, s in summaries.items()
    }
    if promotion:
        data["champion_version"] = int(promotion["champion"]) if promotion.get("champion") else None
    write_json(paths.training_metrics_file(flag), data)
    write_dvc_plots(flag, list(summaries))
    return paths.training_metrics_file(flag)


