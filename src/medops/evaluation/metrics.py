"""Metrics for every MedMNIST task type, and the plots that go with them.

ACC and AUC are medmnist's own getACC/getAUC; the rest comes from scikit-learn.
Scores are probabilities: softmax over classes, or sigmoid per label for multi-label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from medops.evaluation.curves import roc_curves
from medops.plotting import plt, save
from medops.training.scoring import auc_and_acc
from medops.task_rules import MULTI_LABEL, THRESHOLD, predicted_labels


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, task: str, bins: int = 10):
    """ECE over equal-width confidence bins; multi-label counts every (image, label) pair."""
    if task == MULTI_LABEL:
        conf = np.where(scores > THRESHOLD, scores, 1 - scores).ravel()
        correct = ((scores > THRESHOLD) == y_true.astype(bool)).ravel()
    else:
        pred = predicted_labels(scores, task)
        conf = scores[np.arange(len(scores)), pred]
        correct = pred == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            acc, mean_conf = correct[sel].mean(), conf[sel].mean()
            ece += sel.mean() * abs(acc - mean_conf)
            table.append({"bin": b, "count": int(sel.sum()), "accuracy": float(acc), "confidence": float(mean_conf)})
    return float(ece), table


def compute_metrics(y_true: np.ndarray, scores: np.ndarray, task: str, class_names: list[str]) -> dict:
    pred = predicted_labels(scores, task)
    average = dict(zero_division=0)
    labels = list(range(len(class_names)))
    p, r, f, support = precision_recall_fscore_support(
        y_true, pred, labels=None if task == MULTI_LABEL else labels, average=None, **average
    )
    pw, rw, fw, _ = precision_recall_fscore_support(y_true, pred, average="weighted", **average)
    ece, reliability = expected_calibration_error(y_true, scores, task)
    auc, acc = auc_and_acc(y_true, scores, task)
    metrics = {
        "acc": acc, "auc": auc,
        "precision_weighted": float(pw),
        "recall_weighted": float(rw),
        "f1_weighted": float(fw),
        "ece": ece,
        "n": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "reliability": reliability,
    }
    if task != MULTI_LABEL:
        metrics["confusion_matrix"] = confusion_matrix(y_true, pred, labels=labels).tolist()
    return metrics


# ---- plots -----------------------------------------------------------------------------

def plot_confusion(cm: list[list[int]], class_names: list[str], title: str):
    cm = np.asarray(cm)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, k * 0.7), max(3.5, k * 0.6)))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def plot_roc(y_true: np.ndarray, scores: np.ndarray, task: str, class_names: list[str], title: str):
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr) in roc_curves(y_true, scores, task, class_names).items():
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_reliability(reliability: list[dict], ece: float, title: str):
    fig, ax = plt.subplots(figsize=(5, 5))
    conf = [b["confidence"] for b in reliability]
    acc = [b["accuracy"] for b in reliability]
    ax.bar(conf, acc, width=0.08, alpha=0.7, label="accuracy per confidence bin")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f})")
    ax.legend(fontsize=8)
    return fig


def plot_history(history: list[dict], monitor: str, title: str):
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_title("loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    for key in ("val_auc", "val_acc"):
        ax2.plot(epochs, [h[key] for h in history], label=key)
    ax2.set_title(f"validation metrics (selection: {monitor})")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.suptitle(title)
    return fig


def write_plots(folder: Path, split: str, y_true, scores, metrics: dict, task: str, class_names, title: str) -> list[Path]:
    out = [
        save(plot_roc(y_true, scores, task, class_names, f"{title}: ROC ({split})"), folder / f"roc_{split}.png"),
        save(plot_reliability(metrics["reliability"], metrics["ece"], f"{title}: calibration ({split})"),
             folder / f"calibration_{split}.png"),
    ]
    if "confusion_matrix" in metrics:
        out.append(save(plot_confusion(metrics["confusion_matrix"], class_names, f"{title}: confusion ({split})"),
                        folder / f"confusion_{split}.png"))
    return out
