"""reports/<flag>/model_card.md: what a clinician-facing team needs to know about a dataset's
models, written from the stage outputs (data stats, validation, training metrics) and the
registry, then attached to every registered version it describes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from medops import paths

from medops.lifecycle import model_registry as registry
from medops.config import Params
from medops.files import write_text
from medops.lifecycle.report import REFERENCE, fmt

log = logging.getLogger(__name__)

FIGURES = [("history.png", "Training and validation curves"), ("confusion_test.png", "Confusion matrix (test)"),
           ("roc_test.png", "ROC curves (test)"), ("calibration_test.png", "Reliability diagram (test)"),
           ("gradcam.png", "Grad-CAM, correct and wrong test images per class")]

LIMITS = [
    "Research use only: not validated for diagnosis; MedMNIST images are 28 px (or 28^3) downsampled copies of the "
    "source studies and lose detail a reader would use.",
    "Test sets are small (hundreds of images for BreastMNIST and AdrenalMNIST3D): differences of 0.01-0.03 AUC "
    "between runs are within seed noise; compare the mean +- std, not single runs.",
    "The official splits share a few images across splits (see the validation report); validation tolerates "
    "up to `validation.max_leak_fraction`.",
    "Seed runs retrain the best trial's recipe for its kept epoch count; the registered model is the study's run.",
    "Grad-CAM shows where the last wide convolution responds, not a causal explanation.",
    "Predicted labels assume the class shares of the training data (as far as validation chose to undo the "
    "loss weights): where the shares differ, as in PneumoniaMNIST's test split, ACC differs from validation "
    "even when AUC does not.",
]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _data_section(flag: str) -> list[str]:
    stats, result = _load(paths.data_stats_file(flag)), _load(paths.validation_dir(flag) / "result.json")
    lines = ["## Data", ""]
    if result:
        passed = sum(e["success"] for e in result.get("expectations", []))
        status = "passed" if result.get("success") else "FAILED"
        lines.append(f"Great Expectations validation {status}: {passed}/{len(result.get('expectations', []))} "
                     f"expectations ([report](validation/report.md)); source `{result.get('source')}`, "
                     f"size {result.get('size')}, task {result.get('task')}.")
        lines.append("")
    splits = stats.get("splits", {})
    if splits:
        names = list(next(iter(splits.values()))["class_counts"])
        lines += ["| split | images | " + " | ".join(names) + " | imbalance (max/min) |",
                  "|---|---:|" + "---:|" * len(names) + "---:|"]
        for split, s in splits.items():
            counts = " | ".join(str(s["class_counts"][n]) for n in names)
            lines.append(f"| {split} | {s['n']} | {counts} | {s['imbalance_ratio']} |")
    return lines + [""]


def _form_lines(form: dict) -> list[str]:
    """Which form was registered and the validation scores it was chosen by."""
    lines = [f"Registered form: **{form['name']}**, chosen on validation among these (simplest first; a richer "
             "form must win by more than `ensemble.min_gain`; a single model's row is the mean over the seed runs, since the "
             "study's own model was picked on validation). Grad-CAM shows the study's model, the first member.",
             "", "| form | val AUC | val ACC | score (train.monitor) |", "|---|---:|---:|---:|"]
    for row in form.get("candidates", []):
        mark = " (registered)" if row["chosen"] else ""
        lines.append(f"| {row['form']}{mark} | {fmt(row['val_auc'])} | {fmt(row['val_acc'])} | {fmt(row['score'])} |")
    return lines + [""]


def _ran_on(facts: dict) -> str:
    """What the best trial trained on: `auto` layout and precision are timed on the host, so
    another host (or a near tie on this one) can train the same recipe in other kernels."""
    if not facts:
        return ""
    return (f" Trained on {facts.get('device', '?')} in {facts.get('precision', '?')}, {facts.get('layout', '?')} "
            "layout (`train.amp` and `train.channels_last`: `auto` is timed on the host; set them to repeat a run "
            "exactly).")


def _arch_section(flag: str, arch: str, m: dict) -> list[str]:
    ref_auc, ref_acc = REFERENCE.get(flag, (None, None))
    seeds = m.get("seeds", {})
    lines = [f"## {arch}", "",
             f"Study `{m['study']}`: best trial {m['best_trial']} of {sum(m['trials'].values())} "
             f"({m['trials']['complete']} complete, {m['trials']['pruned']} pruned, {m['trials']['failed']} failed), "
             f"kept epoch {m['best_epoch']} (train.select). Registered as `{registry.model_name(flag)}` v{m.get('registered_version', '?')}"
             + (f", int8 as `{registry.int8_model_name(flag)}` v{m['int8_version']}" if m.get("int8_version") else "")
             + ".", "", "Hyperparameters of the best trial: "
             + (", ".join(f"`{k}` = {_value(v)}" for k, v in m["best_params"].items()) or "the base recipe") + "."
             + _ran_on(m.get("ran_on") or {}), "",
             "| | AUC | ACC |", "|---|---:|---:|",
             f"| validation (selection) | {fmt(m['val']['auc'])} | {fmt(m['val']['acc'])} |",
             f"| test, registered model | {fmt(m['test']['auc'])} | {fmt(m['test']['acc'])} |"]
    if seeds:
        lines.append(f"| test, {seeds['n']} seeds (mean +- std) | {seeds['auc_mean']:.3f} +- {seeds['auc_std']:.3f} | "
                     f"{seeds['acc_mean']:.3f} +- {seeds['acc_std']:.3f} |")
    if ref_auc is not None:
        lines.append(f"| MedMNIST v2 ResNet-18 (28) / ResNet-18+3D | {ref_auc:.3f} | {ref_acc:.3f} |")
        if seeds:
            lines.append(f"| delta (seed mean - MedMNIST v2) | {seeds['auc_mean'] - ref_auc:+.3f} | "
                         f"{seeds['acc_mean'] - ref_acc:+.3f} |")
    lines.append("")
    if m.get("decision_rule"):
        lines += [f"Predicted label (and ACC): {m['decision_rule']}.", ""]
    if m.get("form"):
        lines += _form_lines(m["form"])
    for name, caption in FIGURES:
        if (paths.training_dir(flag) / arch / name).exists():
            lines += [f"**{caption}**", "", f"![{caption}](training/{arch}/{name})", ""]
    quant = m.get("quantization", {})
    lines += ["### Quantization (ONNX Runtime, CPU)", ""]
    if quant.get("variants"):
        table = (paths.training_dir(flag) / arch / "quantization.md").read_text().strip()
        lines += [table, "", f"Chosen: {quant['best_int8'] or 'none'} ({quant['reason']}).", ""]
    else:
        lines += [f"Not available: {quant.get('error') or 'quantize.enabled is false'}.", ""]
    return lines


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else f"`{v}`"


def _lineage(flag: str, metrics: dict[str, dict]) -> list[str]:
    lines = ["## Lineage", "", "| architecture | git commit | dataset md5 | dvc.lock processed md5 | MLflow run |",
             "|---|---|---|---|---|"]
    for arch, m in metrics.items():
        lines.append(f"| {arch} | `{m.get('git_commit', '-')}` | `{m.get('dataset_md5', '-')}` | "
                     f"`{m.get('dvc_lock_processed_md5', '-')}` | `{m.get('mlflow_run_id', '-')}` |")
    return lines + [""]


def trained_metrics(flag: str, params: Params) -> dict[str, dict]:
    """metrics.json of each architecture of the dataset that has been trained."""
    metrics = {arch: _load(paths.training_dir(flag) / arch / "metrics.json") for arch in params.archs(flag)}
    return {arch: m for arch, m in metrics.items() if m}


def write_card(flag: str, metrics: dict[str, dict], champion: str | None) -> Path:
    lines = [f"# Model card: {flag}", "",
             f"Champion: `{registry.model_name(flag)}` " + (f"v{champion} (alias `champion`)" if champion else "none yet")
             + f"; load it with `mlflow.pyfunc.load_model(\"models:/{registry.model_name(flag)}@champion\")` or "
             f"`medops predict --model models:/{registry.model_name(flag)}@champion <images>`.", ""]
    lines += _data_section(flag)
    for arch, m in metrics.items():
        lines += _arch_section(flag, arch, m)
    lines += _lineage(flag, metrics)
    lines += ["## Known limits", ""] + [f"- {item}" for item in LIMITS] + [""]
    out = paths.model_card_file(flag)
    write_text(out, "\n".join(lines))
    return out


def attach(flag: str, card: Path, metrics: dict[str, dict]) -> None:
    """Log the card (with its figures) to each architecture's run; link it from its version."""
    client = MlflowClient()
    for arch, m in metrics.items():
        run_id, version = m.get("mlflow_run_id"), m.get("registered_version")
        if not run_id or not version:
            continue
        client.log_artifact(run_id, str(card), "model_card")
        client.log_artifacts(run_id, str(paths.training_dir(flag) / arch), f"model_card/training/{arch}")
        uri = f"{mlflow.get_run(run_id).info.artifact_uri}/model_card/{card.name}"
        client.update_model_version(registry.model_name(flag), version,
                                    description=f"{flag} / {arch}. Model card: {uri}")


def write_and_attach(flag: str, params: Params, champion: str | None) -> Path:
    metrics = trained_metrics(flag, params)
    card = write_card(flag, metrics, champion)
    attach(flag, card, metrics)
    log.info("%s: model card %s", flag, card)
    return card
