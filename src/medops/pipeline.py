"""The training pipeline's units of work, without orchestration (flows call these).

run_experiment: an Optuna study for one (dataset, architecture), the best trial's model
evaluated once on test, logged to MLflow with lineage and registered.
promote_dataset: the promotion gate over a dataset's registered versions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from medops import paths, registry, tracking
from medops.checkpoint import model_from_checkpoint
from medops.config import Params
from medops.data.info import resolve
from medops.data.processed import load_split, read_meta
from medops.errors import MedopsError
from medops.evaluate import plot_history, write_plots
from medops.experiment import evaluate_checkpoint
from medops.inference import InferenceModel, to_medmnist_layout
from medops.io import atomic_dir, write_json
from medops.plotting import save
from medops.tune import run_study

log = logging.getLogger(__name__)


def _pip_requirements() -> list[str]:
    """What the logged model needs to load (passing it also skips MLflow's slow inference)."""
    return [f"torch=={tracking.package_versions()['torch']}", "numpy"]


def log_model(ckpt_path: Path, processed: Path) -> str:
    """Log the InferenceModel (uint8 MedMNIST layout in, probabilities out) in the active run."""
    model, ckpt = model_from_checkpoint(ckpt_path)
    inference = InferenceModel.from_checkpoint(ckpt, model).eval()
    example = to_medmnist_layout(load_split(processed, "val")[0][:2])
    with torch.no_grad():
        output = inference(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        inference, name="model", signature=infer_signature(example, output), input_example=example,
        serialization_format="pt2", pip_requirements=_pip_requirements(),
    )
    return info.model_uri


def _tags(flag: str, arch: str, params: Params) -> dict[str, str]:
    spec = resolve(flag, params.data.datasets[flag].size)
    return {
        "flag": flag, "arch": arch, "git_commit": tracking.git_commit(),
        "dataset_md5": spec.md5 if params.data.datasets[flag].source == "official" else "custom",
        "dvc_lock_processed_md5": tracking.dvc_lock_md5(str(paths.processed_dir(flag))),
    }


def run_experiment(flag: str, arch: str, params: Params) -> dict:
    """Study -> best trial's checkpoint -> test once -> MLflow model + registry version."""
    started = time.perf_counter()
    processed = paths.processed_dir(flag)
    meta = read_meta(processed)
    uri = tracking.configure(params.mlflow)
    tracking.use_experiment(params.mlflow, flag)
    tags = _tags(flag, arch, params)
    base = params.recipe(flag, arch)
    study_name = f"{flag}-{arch}"
    storage = params.tune.storage or paths.optuna_storage()

    with mlflow.start_run(run_name=study_name, tags={**tags, "kind": "study"}) as parent:
        mlflow.log_params({"arch": arch, "flag": flag, "study": study_name,
                           "optuna_storage": tracking.redact(storage), "n_trials": params.study_budget(flag).n_trials})
        mlflow.log_dict(base.model_dump(), "recipe/base_train_params.json")
        mlflow.log_dict(tracking.package_versions(), "lineage/package_versions.json")
        study = run_study(processed, base, params.study_budget(flag), study_name, storage, paths.trials_dir(flag, arch),
                          tracking.TrialRuns(parent.info.run_id, tags))
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metrics({"best_trial": study.best_trial, "trials_complete": study.n_complete,
                            "trials_pruned": study.n_pruned, "trials_failed": study.n_failed})

        evaluated = evaluate_checkpoint(study.checkpoint, processed)  # the only test evaluation
        val, test = evaluated["val"]["metrics"], evaluated["test"]["metrics"]
        report_dir = paths.training_dir(flag) / arch
        with atomic_dir(report_dir) as tmp:
            for split, r in evaluated.items():
                write_plots(tmp, split, r["y"], r["scores"], r["metrics"], meta.task, meta.class_names, study_name)
            if "history" in (last := _last_state(study.checkpoint)):
                save(plot_history(last["history"], base.monitor, study_name), tmp / "history.png")
            summary = {
                "flag": flag, "arch": arch, "task": meta.task, "study": study_name, "best_trial": study.best_trial,
                "best_params": study.best_params, "best_epoch": study.best_epoch, "val": val, "test": test,
                "trials": {"complete": study.n_complete, "pruned": study.n_pruned, "failed": study.n_failed},
                "mlflow_run_id": parent.info.run_id, "tracking_uri": tracking.redact(uri), **tags,
            }
            write_json(tmp / "metrics.json", summary)
        mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
        for split, m in (("val", val), ("test", test)):
            mlflow.log_metrics({f"{split}_{k}": m[k] for k in ("auc", "acc", "f1_weighted", "ece", "loss")})

        model_uri = log_model(study.checkpoint, processed)
        version = registry.register(flag, model_uri, parent.info.run_id, {
            **tags, "val_auc": f"{val['auc']:.6f}", "val_acc": f"{val['acc']:.6f}",
            "test_auc": f"{test['auc']:.6f}", "test_acc": f"{test['acc']:.6f}",
            "eligible": str(bool(np.isfinite(val["auc"]))).lower(), "mlflow_run_id": parent.info.run_id,
        })
        mlflow.set_tag("registered_version", version.version)
    summary.update(registered_version=version.version, seconds=round(time.perf_counter() - started, 1))
    write_json(report_dir / "metrics.json", summary)
    log.info("%s: test AUC %.4f ACC %.4f, registered %s v%s", study_name, test["auc"], test["acc"],
             registry.model_name(flag), version.version)
    return summary


def _last_state(best_ckpt: Path) -> dict:
    last = best_ckpt.with_name("last.pt")
    return torch.load(last, map_location="cpu", weights_only=True) if last.exists() else {}


def summary_from_registry(flag: str, arch: str, params: Params) -> dict:
    """The newest registered version of (flag, arch) as a study summary: how the flow learns a
    study's outcome when a worker on another host ran it (the registry is what they share)."""
    from mlflow import MlflowClient

    tracking.configure(params.mlflow)
    name = registry.model_name(flag)
    versions = [v for v in MlflowClient().search_model_versions(f"name='{name}'") if v.tags.get("arch") == arch]
    if not versions:
        raise MedopsError(f"{name}: no version of {arch} was registered by the study")
    v = max(versions, key=lambda v: int(v.version))
    metric = lambda key: float(v.tags.get(key, "nan"))  # noqa: E731
    return {"flag": flag, "arch": arch, "registered_version": v.version,
            "val": {"auc": metric("val_auc"), "acc": metric("val_acc")},
            "test": {"auc": metric("test_auc"), "acc": metric("test_acc")}}


def promote_dataset(flag: str, params: Params) -> dict:
    tracking.configure(params.mlflow)
    result = registry.promote(flag, params.promotion.metric, params.promotion.min_delta)
    return result.__dict__


def write_training_metrics(flag: str, summaries: dict[str, dict], promotion: dict | None) -> Path:
    """reports/<flag>/training.json: one entry per architecture (DVC metrics)."""
    data = {
        arch: {"val_auc": s["val"]["auc"], "val_acc": s["val"]["acc"], "test_auc": s["test"]["auc"],
               "test_acc": s["test"]["acc"], "version": int(s["registered_version"])}
        for arch, s in summaries.items()
    }
    if promotion:
        data["champion_version"] = int(promotion["champion"]) if promotion.get("champion") else None
    write_json(paths.training_metrics_file(flag), data)
    return paths.training_metrics_file(flag)


