"""The data behind the plots, as CSV files DVC can plot and diff across commits and experiments
(the PNGs stay for the model card): training history, ROC points per class, and the
(actual, predicted) pairs DVC's confusion template counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medops.data.info import BINARY, MULTI_LABEL
from medops.files import write_csv

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "val_acc")


def write_history(folder: Path, history: list[dict]) -> Path:
    return write_csv(folder / "history.csv", HISTORY_COLUMNS, ([h[c] for c in HISTORY_COLUMNS] for h in history))


def roc_curves(y_true: np.ndarray, scores: np.ndarray, task: str, class_names: list[str]) -> dict:
    """{class name: (fpr, tpr)}: the positive class only for binary tasks; a class with one
    outcome only in y_true has no curve."""
    from sklearn.metrics import roc_curve  # here: the per-dataset stages read these files without sklearn

    columns = [len(class_names) - 1] if task == BINARY else range(len(class_names))
    curves = {}
    for c in columns:
        truth = y_true[:, c] if task == MULTI_LABEL else (y_true.reshape(-1) == c)
        if truth.min() != truth.max():
            fpr, tpr, _ = roc_curve(truth, scores[:, c])
            curves[class_names[c]] = (fpr, tpr)
    return curves


def write_curves(folder: Path, split: str, y_true: np.ndarray, scores: np.ndarray, metrics: dict, task: str,
                 class_names: list[str]) -> list[Path]:
    points = ((name, round(float(f), 6), round(float(t), 6))
              for name, (fpr, tpr) in roc_curves(y_true, scores, task, class_names).items() for f, t in zip(fpr, tpr))
    out = [write_csv(folder / f"roc_{split}.csv", ("class", "fpr", "tpr"), points)]
    if "confusion_matrix" in metrics:  # not for multi-label tasks
        pairs = ((class_names[i], class_names[j]) for i, row in enumerate(metrics["confusion_matrix"])
                 for j, count in enumerate(row) for _ in range(count))
        out.append(write_csv(folder / f"confusion_{split}.csv", ("actual", "predicted"), pairs))
    return out
