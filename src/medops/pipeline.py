"""The training pipeline's units of work, without orchestration (flows call these).

run_experiment: an Optuna study for one (dataset, architecture), the best trial's model
evaluated once on test, retrained over seeds, explained (Grad-CAM), quantized (int8), logged
to MLflow with lineage and registered (fp32 pyfunc and the best int8 ONNX variant).
promote_dataset: the promotion gate over a dataset's registered versions.
write_model_card: reports/<flag>/model_card.md, attached to the versions it describes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from medops import explain, model_card, paths, quantize, registry, tracking
from medops.checkpoint import load_checkpoint, model_from_checkpoint
from medops.config import Params
from medops.data.info import resolve
from medops.data.processed import load_split, read_meta
from medops.errors import MedopsError
from medops.evaluate import plot_history, write_plots
from medops.experiment import evaluate_checkpoint, seed_runs
from medops.inference import InferenceModel, to_medmnist_layout
from medops.io import atomic_dir, write_json, write_text
from medops.plotting import save
from medops.serving import log_classifier
from medops.task_rules import decision_rule
from medops.tune import run_study, with_values

log = logging.getLogger(__name__)


def _tags(flag: str, arch: str, params: Params) -> dict[str, str]:
    spec = resolve(flag, params.data.datasets[flag].size)
    return {
        "flag": flag, "arch": arch, "git_commit": tracking.git_commit(),
        "dataset_md5": spec.md5 if params.data.datasets[flag].source == "official" else "custom",
        "dvc_lock_processed_md5": tracking.dvc_lock_md5(str(paths.processed_dir(flag))),
    }


def run_experiment(flag: str, arch: str, params: Params) -> dict:
    """Study -> best trial's checkpoint -> test once -> seeds, Grad-CAM, int8 -> MLflow + registry."""
    try:
        return _run_experiment(flag, arch, params)
    except MlflowException as exc:  # after MLflow's bounded retries: the server is gone or refusing
        raise MedopsError(tracking.redact(
            f"MLflow tracking at {mlflow.get_tracking_uri()} stopped answering ({str(exc).splitlines()[0][:160]}...); "
            "no version was registered by this run; rerun when the server is back"
        )) from None


def _run_experiment(flag: str, arch: str, params: Params) -> dict:
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
        seeds = _seeds(flag, arch, params, study, test)
        quant, quant_error = _quantize(flag, arch, params, study.checkpoint)
        report_dir = paths.training_dir(flag) / arch
        with atomic_dir(report_dir) as tmp:
            for split, r in evaluated.items():
                write_plots(tmp, split, r["y"], r["scores"], r["metrics"], meta.task, meta.class_names, study_name)
            if "history" in (last := _last_state(study.checkpoint)):
                save(plot_history(last["history"], base.monitor, study_name), tmp / "history.png")
            save(_gradcam(study.checkpoint, processed, study_name, params.explain.per_class), tmp / "gradcam.png")
            if quant:
                write_text(tmp / "quantization.md", quantize.markdown_table(quant) + "\n")
            summary = {
                "flag": flag, "arch": arch, "task": meta.task, "study": study_name, "best_trial": study.best_trial,
                "best_params": study.best_params, "best_epoch": study.best_epoch, "val": val, "test": test,
                "trials": {"complete": study.n_complete, "pruned": study.n_pruned, "failed": study.n_failed},
                "seeds": seeds, "quantization": quant.as_dict() if quant else {"error": quant_error},
                "decision_rule": decision_rule(load_checkpoint(study.checkpoint), meta.task),
                "mlflow_run_id": parent.info.run_id, "tracking_uri": tracking.redact(uri), **tags,
            }
            write_json(tmp / "metrics.json", summary)
        mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
        for split, m in (("val", val), ("test", test)):
            mlflow.log_metrics({f"{split}_{k}": m[k] for k in ("auc", "acc", "f1_weighted", "ece", "loss")})
        mlflow.log_metrics({"seeds_test_auc_mean": seeds["auc_mean"], "seeds_test_auc_std": seeds["auc_std"],
                            "seeds_test_acc_mean": seeds["acc_mean"], "seeds_test_acc_std": seeds["acc_std"]})

        example = to_medmnist_layout(load_split(processed, "val")[0][:2])
        model_uri = log_classifier(study.checkpoint, example).model_uri
        eligible = bool(np.isfinite(val["auc"])) and quant_error is None
        version = registry.register(flag, model_uri, parent.info.run_id, {
            **tags, "val_auc": f"{val['auc']:.6f}", "val_acc": f"{val['acc']:.6f}",
            "test_auc": f"{test['auc']:.6f}", "test_acc": f"{test['acc']:.6f}",
            "eligible": str(eligible).lower(), "mlflow_run_id": parent.info.run_id,
            "quantization": quant_error or (quant.best_int8 if quant else "disabled") or "none registered (see the model card)",
        })
        mlflow.set_tag("registered_version", version.version)
        if quant and quant.best_int8:
            summary["int8_version"] = _register_int8(flag, arch, quant, example, parent.info.run_id,
                                                     version.version, tags)
    summary.update(registered_version=version.version, seconds=round(time.perf_counter() - started, 1))
    write_json(report_dir / "metrics.json", summary)
    log.info("%s: test AUC %.4f ACC %.4f, registered %s v%s", study_name, test["auc"], test["acc"],
             registry.model_name(flag), version.version)
    return summary


def _seeds(flag: str, arch: str, params: Params, study, test: dict) -> dict:
    """Test AUC/ACC over report.seeds runs of the best recipe: the study's own run plus retrains."""
    recipe = with_values(params.recipe(flag, arch), study.best_params)
    extra = [recipe.seed + i for i in range(1, params.report.seeds)]
    runs = [{"seed": recipe.seed, "auc": test["auc"], "acc": test["acc"], "best_epoch": study.best_epoch}]
    runs += seed_runs(paths.processed_dir(flag), recipe, study.best_epoch, extra, paths.model_dir(flag, arch) / "seeds")
    auc, acc = np.array([r["auc"] for r in runs]), np.array([r["acc"] for r in runs])
    mlflow.log_dict(runs, "evaluation/seed_runs.json")
    return {"n": len(runs), "epochs": study.best_epoch, "runs": runs, "auc_mean": float(auc.mean()),
            "auc_std": float(auc.std()), "acc_mean": float(acc.mean()), "acc_std": float(acc.std())}


def _quantize(flag: str, arch: str, params: Params, checkpoint: Path):
    """(report, None) or (None, why it failed). A failure makes the version ineligible."""
    if not params.quantize.enabled:
        return None, None
    q = params.quantize
    try:
        report = quantize.quantize_checkpoint(checkpoint, paths.processed_dir(flag), paths.model_dir(flag, arch) / "quantized",
                                              q.calibration_size, q.max_auc_drop, q.seconds, q.qat_epochs, q.qat_lr,
                                              q.max_acc_drop)
    except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure is reported, not raised
        log.error("%s/%s: quantization failed: %s", flag, arch, exc)
        return None, f"failed: {str(exc).splitlines()[0][:200]}"
    for v in report.variants:
        key = v.name.replace(" ", "_")
        mlflow.log_metrics({f"quant.{key}.test_auc": v.test_auc, f"quant.{key}.delta_auc": v.delta_auc,
                            f"quant.{key}.size_kib": v.size_bytes / 1024, f"quant.{key}.img_s_b1": v.images_per_s_b1,
                            f"quant.{key}.img_s_b256": v.images_per_s_b256})
    mlflow.log_dict(report.as_dict(), "quantization/report.json")
    log.info("%s/%s quantization: %s\n%s", flag, arch, report.reason, quantize.markdown_table(report))
    return report, None


def _register_int8(flag: str, arch: str, report, example: np.ndarray, run_id: str, fp32_version: str,
                   tags: dict) -> str:
    import onnx

    path = quantize.file_of(report, paths.model_dir(flag, arch) / "quantized", report.best_int8)
    output = quantize.onnx_predictor(path)(example)
    # the variant was chosen for its CPU speed; MLflow's default also asks for CUDA, which
    # warns on every CPU-only load and would not run these int8 kernels faster
    info = mlflow.onnx.log_model(onnx.load(str(path)), name="model-int8", signature=infer_signature(example, output),
                                 input_example=example, onnx_execution_providers=["CPUExecutionProvider"])
    chosen = next(v for v in report.variants if v.name == report.best_int8)
    version = registry.register(flag, info.model_uri, run_id, {
        **tags, "variant": chosen.name, "fp32_version": str(fp32_version), "test_auc": f"{chosen.test_auc:.6f}",
        "delta_auc": f"{chosen.delta_auc:+.6f}", "speedup_b256": f"{chosen.speedup_b256:.2f}",
        "smaller": f"{chosen.smaller:.2f}",
    }, name=registry.int8_model_name(flag))
    return version.version


def _gradcam(checkpoint: Path, processed: Path, title: str, per_class: int):
    model, ckpt = model_from_checkpoint(checkpoint)
    x, y = load_split(processed, "test")
    return explain.examples_grid(InferenceModel.from_checkpoint(ckpt, model).eval(), to_medmnist_layout(x), y,
                                 ckpt["class_names"], ckpt["task"], title, per_class)


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


def write_model_card(flag: str, params: Params, promotion: dict | None) -> Path:
    tracking.configure(params.mlflow)
    return model_card.write_and_attach(flag, params, promotion and promotion.get("champion"))


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


