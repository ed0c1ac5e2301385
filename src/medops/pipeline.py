"""The training pipeline's stages, without orchestration: tasks/study.py composes them as
Prefect tasks (study_stages); each is a plain function that can be called on its own.

Per (dataset, architecture):
  tune      the Optuna study (resumable); opens the MLflow run every later stage logs into
  seeds     the best recipe retrained with report.seeds - 1 more seeds (test mean +- std)
  evaluate  the registered form chosen on validation (evaluation/forms.py), evaluated on val and test once
  explain   Grad-CAM of the study's model
  quantize  int8 variants of the form (ONNX Runtime) and the one worth registering
  register  metrics, plots and the pyfunc (and int8 twin) logged and registered, idempotently
Per dataset, after its studies: medops/dataset_stages.py (no torch: what pool mode's
orchestrating host runs).

Every stage but register records its result under models/<flag>/<arch>/stages/, keyed by
its inputs: a rerun after a failure in a late stage reuses the earlier ones and starts there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from medops import paths
from medops.config import Params
from medops.data.info import resolve
from medops.data.processed import load_split, read_meta
from medops.errors import MedopsError, redact
from medops.evaluation import gradcam
from medops.evaluation.curves import write_curves, write_history
from medops.evaluation.forms import choose_form, evaluate_form
from medops.evaluation.metrics import plot_history, write_plots
from medops.files import atomic_dir, ensure_dir, write_json, write_text
from medops.memory import keep_freed_memory
from medops.lifecycle import model_registry as registry
from medops.lifecycle import tracking
from medops.plotting import save
from medops.release import quantize as int8
from medops.release.inference import InferenceModel, to_medmnist_layout
from medops.release.pyfunc import log_classifier
from medops.runs import evaluate_checkpoint, seed_runs
from medops.task_rules import decision_rule
from medops.training.checkpoint import load_checkpoint, model_from_checkpoint
from medops.training.loop import fingerprint
from medops.training.store import open_store
from medops.training.tune import run_study, with_values

log = logging.getLogger(__name__)

STAGES = ("tune", "seeds", "evaluate", "explain", "quantize", "register")


def tracking_errors(stage: Callable) -> Callable:
    """MLflow errors (after its bounded retries) as one sentence a user can act on."""
    @functools.wraps(stage)
    def wrapper(*args, **kwargs):
        try:
            return stage(*args, **kwargs)
        except MlflowException as exc:
            raise MedopsError(redact(
                f"MLflow tracking at {mlflow.get_tracking_uri()} stopped answering ({str(exc).splitlines()[0][:160]}...)"
                f" in stage {stage.__name__}; no version was registered by this run; rerun when the server is back"
            )) from None
    return wrapper


def stage_dir(flag: str, arch: str) -> Path:
    """Where each stage records its result (and the plots it made, until register publishes them)."""
    return paths.model_dir(flag, arch) / "stages"


# The code a stage's result depends on, part of its key: a fix there reruns it. tune and seeds
# have none: studies and checkpoints resume by recipe and data, so rerunning them retrains nothing.
STAGE_CODE = {"evaluate": ("evaluation", "release/inference.py", "task_rules.py"),
              "explain": ("evaluation/gradcam.py", "release/inference.py"),
              "quantize": ("release", "task_rules.py")}


def code_digest(parts: tuple[str, ...]) -> str:
    """sha256 over the sources of these modules and packages of medops."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for part in parts:
        for f in sorted((package / part).rglob("*.py")) if (package / part).is_dir() else [package / part]:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _recorded(flag: str, arch: str, name: str, params: Params, inputs: dict, run: Callable[[], dict]) -> dict:
    """The stage's recorded result when its inputs (and code) are unchanged and the files it names
    still exist, here or in the checkpoint store (a study finished on another host); otherwise
    run it and record the result (only a stage that finished is recorded), in the store too."""
    if name in STAGE_CODE:
        inputs = {**inputs, "code": code_digest(STAGE_CODE[name])}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    record = stage_dir(flag, arch) / f"{name}.json"
    store = open_store(params.orchestration.checkpoint_store)
    saved = _saved_result(record, key, store)
    if saved is not None:
        log.info("%s/%s: %s unchanged since its last run: reusing its result", flag, arch, name)
        return saved
    keep_freed_memory()  # training and batched inference reuse large blocks (memory.py)
    result = run()
    write_json(record, {"key": key, "result": result})
    files = [Path(f) for f in result.get("files", [])]
    if store is not None and not any(f.is_absolute() or ".." in f.parts for f in [record, *files]):
        store.push_paths([*files, record])  # the record last: it never names files the store lacks
    return result


def _saved_result(record: Path, key: str, store) -> dict | None:
    """The result recorded under `key` whose files exist, pulled from the store when this host
    lacks the record or its files; None when the stage must run."""
    def usable(saved: dict) -> bool:
        return saved.get("key") == key and all(Path(f).exists() for f in saved["result"].get("files", []))

    if record.exists() and usable(saved := json.loads(record.read_text())):
        return saved["result"]
    if store is None:
        return None
    pushed = store.read(record)
    if pushed is None:
        return None
    saved = json.loads(pushed)
    if saved.get("key") != key or not store.pull_paths([Path(f) for f in saved["result"].get("files", [])]):
        return None
    write_json(record, saved)
    log.info("%s: pulled from %s", record, redact(store.url))
    return saved["result"] if usable(saved) else None


def _tags(flag: str, arch: str, params: Params) -> dict[str, str]:
    spec = resolve(flag, params.data.datasets[flag].size)
    return {
        "flag": flag, "arch": arch, "git_commit": tracking.git_commit(),
        "dataset_md5": spec.md5 if params.data.datasets[flag].source == "official" else "custom",
        "dvc_lock_processed_md5": tracking.dvc_lock_md5(str(paths.processed_dir(flag))),
    }


@tracking_errors
def tune(flag: str, arch: str, params: Params) -> dict:
    """The Optuna study, logged as the MLflow run the later stages log into. Waits for trials
    other workers run in the same study (tune_more), so its result is the study's final best."""
    processed = paths.processed_dir(flag)
    base, budget = params.recipe(flag, arch), params.study_budget(flag)
    uri = tracking.configure(params.mlflow)
    storage = paths.optuna_storage(params.tune.storage)
    inputs = {"recipe": fingerprint(base, read_meta(processed)), "budget": budget.model_dump(),
              "tracking": redact(uri), "storage": redact(storage)}

    def run() -> dict:
        run_id, tags, study = _study_run(flag, arch, params, storage, kind="study")
        return {**asdict(study), "checkpoint": str(study.checkpoint), "run_id": run_id,
                "tracking_uri": redact(uri), "tags": tags, "files": [str(study.checkpoint)]}

    return _recorded(flag, arch, "tune", params, inputs, run)


@tracking_errors
def tune_more(flag: str, arch: str, params: Params) -> dict:
    """Trials of the (flag, arch) study beside the run that finishes it (tune.workers_per_study):
    returns once the study's budget is met, records nothing, registers nothing."""
    storage = paths.optuna_storage(params.tune.storage)
    run_id, _, _ = _study_run(flag, arch, params, storage, kind="study-worker")
    return {"study": f"{flag}-{arch}", "run_id": run_id}


def _study_run(flag: str, arch: str, params: Params, storage: str, kind: str) -> tuple[str, dict, object]:
    """An MLflow run (tagged `kind`) whose children are the trials this process runs."""
    tracking.configure(params.mlflow)
    tracking.use_experiment(params.mlflow, flag)
    base, budget = params.recipe(flag, arch), params.study_budget(flag)
    tags, study_name = _tags(flag, arch, params), f"{flag}-{arch}"
    final = kind == "study"
    # system metrics (CPU, memory, GPU where there is one): a starved worker shows in the run itself
    with mlflow.start_run(run_name=study_name if final else f"{study_name}-worker", tags={**tags, "kind": kind},
                          log_system_metrics=True) as parent:
        mlflow.log_params({"arch": arch, "flag": flag, "study": study_name,
                           "optuna_storage": redact(storage), "n_trials": budget.n_trials})
        mlflow.log_dict(base.model_dump(), "recipe/base_train_params.json")
        mlflow.log_dict(tracking.package_versions(), "lineage/package_versions.json")
        study = run_study(paths.processed_dir(flag), base, budget, study_name, storage, paths.trials_dir(flag, arch),
                          tracking.TrialRuns(parent.info.run_id, tags), wait_for_others=final,
                          store=open_store(params.orchestration.checkpoint_store))
        if final:
            mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
            mlflow.log_metrics({"best_trial": study.best_trial, "trials_complete": study.n_complete,
                                "trials_pruned": study.n_pruned, "trials_failed": study.n_failed})
    return parent.info.run_id, tags, study


@tracking_errors
def seeds(flag: str, arch: str, params: Params, tuned: dict) -> dict:
    """Test AUC/ACC over report.seeds runs of the best recipe: the study's own run plus retrains."""
    def run() -> dict:
        tracking.configure(params.mlflow)
        processed = paths.processed_dir(flag)
        recipe = with_values(params.recipe(flag, arch), tuned["best_params"])
        test = evaluate_checkpoint(Path(tuned["checkpoint"]), processed, ("test",))["test"]["metrics"]
        runs = [{"seed": recipe.seed, "auc": test["auc"], "acc": test["acc"], "best_epoch": tuned["best_epoch"],
                 "checkpoint": tuned["checkpoint"]}]
        extra = [recipe.seed + i for i in range(1, params.report.seeds)]
        runs += seed_runs(processed, recipe, tuned["best_epoch"], extra, paths.model_dir(flag, arch) / "seeds",
                          params.report.processes)
        auc, acc = np.array([r["auc"] for r in runs]), np.array([r["acc"] for r in runs])
        with mlflow.start_run(run_id=tuned["run_id"]):
            mlflow.log_dict(runs, "evaluation/seed_runs.json")
            mlflow.log_metrics({"seeds_test_auc_mean": float(auc.mean()), "seeds_test_auc_std": float(auc.std()),
                                "seeds_test_acc_mean": float(acc.mean()), "seeds_test_acc_std": float(acc.std())})
        return {"n": len(runs), "epochs": tuned["best_epoch"], "runs": runs, "auc_mean": float(auc.mean()),
                "auc_std": float(auc.std()), "acc_mean": float(acc.mean()), "acc_std": float(acc.std()),
                "files": [r["checkpoint"] for r in runs]}

    return _recorded(flag, arch, "seeds", params, {"tune": tuned, "seeds": params.report.seeds}, run)


@tracking_errors
def evaluate(flag: str, arch: str, params: Params, tuned: dict, seeded: dict) -> dict:
    """Choose the registered form on validation, then evaluate it on val and test (the only time
    the registered model sees test); plots go to the stage folder until register publishes them."""
    def run() -> dict:
        tracking.configure(params.mlflow)
        processed, meta = paths.processed_dir(flag), read_meta(paths.processed_dir(flag))
        recipe, e = params.recipe(flag, arch), params.ensemble
        members = [Path(r["checkpoint"]) for r in seeded["runs"]] if e.seeds else [Path(tuned["checkpoint"])]
        flip_allowed = e.flip_tta and recipe.augment.enabled and recipe.augment.hflip > 0
        form, candidates = choose_form(members, processed, recipe.monitor, flip_allowed, e.min_gain)
        evaluated = evaluate_form(form, processed)
        plots = ensure_dir(stage_dir(flag, arch) / "evaluate")
        title = f"{flag}-{arch}"
        for split, r in evaluated.items():
            write_plots(plots, split, r["y"], r["scores"], r["metrics"], meta.task, meta.class_names, title)
            write_curves(plots, split, r["y"], r["scores"], r["metrics"], meta.task, meta.class_names)
        last = Path(tuned["checkpoint"]).with_name("last.pt")
        if last.exists() and "history" in (state := torch.load(last, map_location="cpu", weights_only=True)):
            save(plot_history(state["history"], recipe.monitor, title), plots / "history.png")
            write_history(plots, state["history"])
        val, test = evaluated["val"]["metrics"], evaluated["test"]["metrics"]
        with mlflow.start_run(run_id=tuned["run_id"]):
            mlflow.log_dict(candidates, "evaluation/forms.json")
            for split, m in (("val", val), ("test", test)):
                mlflow.log_metrics({f"{split}_{k}": m[k] for k in ("auc", "acc", "f1_weighted", "ece", "loss")})
        return {"form": {**form.as_dict(), "candidates": candidates}, "val": val, "test": test,
                "decision_rule": decision_rule(load_checkpoint(form.checkpoints[0]), meta.task),
                "plots": str(plots), "files": [str(plots), *map(str, form.checkpoints)]}

    inputs = {"tune": tuned, "seeds": seeded, "ensemble": params.ensemble.model_dump()}
    return _recorded(flag, arch, "evaluate", params, inputs, run)


def explain(flag: str, arch: str, params: Params, tuned: dict) -> dict:
    """Grad-CAM of the study's model on correct and wrong test images per class."""
    def run() -> dict:
        model, ckpt = model_from_checkpoint(tuned["checkpoint"])
        x, y = load_split(paths.processed_dir(flag), "test")
        figure = gradcam.examples_grid(InferenceModel.from_checkpoint(ckpt, model).eval(), to_medmnist_layout(x), y,
                                       ckpt["class_names"], ckpt["task"], f"{flag}-{arch}", params.explain.per_class)
        path = ensure_dir(stage_dir(flag, arch) / "explain") / "gradcam.png"
        save(figure, path)
        return {"gradcam": str(path), "files": [str(path)]}

    return _recorded(flag, arch, "explain", params, {"tune": tuned, "explain": params.explain.model_dump()}, run)


def quantize(flag: str, arch: str, params: Params, evaluated: dict) -> dict:
    """Int8 variants of the registered form and the one worth registering (or why none is)."""
    def run() -> dict:
        q, form = params.quantize, evaluated["form"]
        if not q.enabled:
            return {"report": None, "files": []}
        out = paths.model_dir(flag, arch) / "quantized"
        report = int8.quantize_checkpoint([Path(c) for c in form["checkpoints"]], paths.processed_dir(flag), out,
                                          q.calibration_size, q.max_auc_drop, q.seconds, q.qat_epochs, q.qat_lr,
                                          q.max_acc_drop, flip=form["flip_tta"], qat_when=q.qat_when,
                                          evaluate=q.evaluate)
        log.info("%s/%s quantization: %s\n%s", flag, arch, report.reason, int8.markdown_table(report))
        chosen = int8.file_of(report, out, report.best_int8) if report.best_int8 else None
        return {"report": report.as_dict(), "table": int8.markdown_table(report), "dir": str(out),
                "files": [str(chosen)] if chosen else []}

    inputs = {"evaluate": evaluated, "quantize": params.quantize.model_dump()}
    return _recorded(flag, arch, "quantize", params, inputs, run)


@tracking_errors
def register(flag: str, arch: str, params: Params, tuned: dict, seeded: dict, evaluated: dict, explained: dict,
             quantized: dict) -> dict:
    """Publish the report folder, log it and the models to the study's MLflow run and register
    them. Idempotent: a version carries the key of what it was built from, and a rerun that would
    register the same thing returns the existing version instead."""
    started = time.perf_counter()
    study_name = f"{flag}-{arch}"
    form, val, test = evaluated["form"], evaluated["val"], evaluated["test"]
    quant = quantized["report"]
    summary = {
        "flag": flag, "arch": arch, "task": read_meta(paths.processed_dir(flag)).task, "study": study_name,
        "best_trial": tuned["best_trial"], "best_params": tuned["best_params"], "best_epoch": tuned["best_epoch"],
        # ran_on: absent from tune records made before it was kept
        "ran_on": tuned.get("ran_on", {}), "val": val, "test": test,
        "trials": {"complete": tuned["n_complete"], "pruned": tuned["n_pruned"], "failed": tuned["n_failed"]},
        "form": form, "seeds": {k: v for k, v in seeded.items() if k != "files"},
        "quantization": quant or {"error": "disabled (quantize.enabled is false)"},
        "decision_rule": evaluated["decision_rule"], "mlflow_run_id": tuned["run_id"],
        "tracking_uri": tuned["tracking_uri"], **tuned["tags"],
    }
    # the study's trial, its recipe and data, and the form: not the run or the host, so a second
    # run of the same study (another flow run, another worker) finds this version instead
    basis = fingerprint(params.recipe(flag, arch), read_meta(paths.processed_dir(flag)))
    key = hashlib.sha256(json.dumps([study_name, basis, tuned["best_trial"], form["name"],
                                     len(form["checkpoints"]), form["flip_tta"]]).encode()).hexdigest()[:16]
    report_dir = paths.training_dir(flag) / arch
    with atomic_dir(report_dir) as tmp:
        for folder in (Path(evaluated["plots"]), Path(explained["gradcam"]).parent):
            for f in folder.iterdir():
                shutil.copy2(f, tmp / f.name)
        if quant:
            write_text(tmp / "quantization.md", quantized["table"] + "\n")
        write_json(tmp / "metrics.json", summary)
    tracking.configure(params.mlflow)
    existing = registry.find_version(registry.model_name(flag), key)
    example = to_medmnist_layout(load_split(paths.processed_dir(flag), "val")[0][:2])
    about = _about(flag, example)
    with mlflow.start_run(run_id=tuned["run_id"]):
        if existing is None:
            mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
            model_uri = log_classifier([Path(c) for c in form["checkpoints"]], example, flip=form["flip_tta"]).model_uri
            version = registry.register(flag, model_uri, tuned["run_id"], {
                **tuned["tags"], "val_auc": f"{val['auc']:.6f}", "val_acc": f"{val['acc']:.6f}",
                "test_auc": f"{test['auc']:.6f}", "test_acc": f"{test['acc']:.6f}",
                "eligible": str(bool(np.isfinite(val["auc"]))).lower(), "form": form["name"],
                "mlflow_run_id": tuned["run_id"], registry.BUILD_KEY: key,
                "quantization": (quant["best_int8"] or "none registered (see the model card)") if quant else "disabled",
            }, about=about)
            mlflow.set_tag("registered_version", version.version)
            if quant and quant["best_int8"]:
                summary["int8_version"] = _register_int8(flag, arch, quant, Path(quantized["dir"]), example, about,
                                                         tuned["run_id"], version.version, tuned["tags"], key)
        else:
            version = existing
            log.info("%s: v%s was registered from this very trial, form and data: nothing new to register",
                     registry.model_name(flag), version.version)
            registry.describe(registry.model_name(flag), flag, about)
            int8_existing = registry.find_version(registry.int8_model_name(flag), key)
            if int8_existing is not None:
                summary["int8_version"] = int8_existing.version
                registry.describe(registry.int8_model_name(flag), flag, about)
    summary.update(registered_version=version.version, seconds=round(time.perf_counter() - started, 1))
    write_json(report_dir / "metrics.json", summary)
    log.info("%s: test AUC %.4f ACC %.4f (%s), registered %s v%s", study_name, test["auc"], test["acc"], form["name"],
             registry.model_name(flag), version.version)
    return summary


def _about(flag: str, example: np.ndarray) -> dict[str, str]:
    """What the registered model itself is, for its description and tags in the registry list."""
    meta = read_meta(paths.processed_dir(flag))
    shape = ", ".join(["N", *map(str, example.shape[1:])])
    return {"task": meta.task, "n_classes": str(meta.n_classes), "classes": "; ".join(meta.class_names),
            "input": f"uint8 ({shape}), values 0-255, as MedMNIST's .npz holds them"}


def _register_int8(flag: str, arch: str, report: dict, out: Path, example: np.ndarray, about: dict[str, str],
                   run_id: str, fp32_version: str, tags: dict, key: str) -> str:
    import onnx

    chosen = next(v for v in report["variants"] if v["name"] == report["best_int8"])
    path = out / chosen["file"]
    output = int8.onnx_predictor(path)(example)
    # the variant was chosen for its CPU speed; MLflow's default also asks for CUDA, which
    # warns on every CPU-only load and would not run these int8 kernels faster
    info = mlflow.onnx.log_model(onnx.load(str(path)), name="model-int8", signature=infer_signature(example, output),
                                 input_example=example, onnx_execution_providers=["CPUExecutionProvider"])
    version = registry.register(flag, info.model_uri, run_id, {
        **tags, "variant": chosen["name"], "fp32_version": str(fp32_version), "test_auc": f"{chosen['test_auc']:.6f}",
        "delta_auc": f"{chosen['delta_auc']:+.6f}", "speedup_b256": f"{chosen['speedup_b256']:.2f}",
        "smaller": f"{chosen['smaller']:.2f}", registry.BUILD_KEY: key,
    }, name=registry.int8_model_name(flag), about=about)
    return version.version
