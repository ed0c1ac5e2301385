"""reports/<flag>/plots/: the plot data of every architecture of a dataset, one folder per kind
of plot so dvc.yaml can give each its DVC template (history: linear, roc: simple, confusion:
confusion). Files are named <arch>_<what>.csv, so `dvc plots diff` overlays revisions of one
architecture's curve."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from medops import paths
from medops.evaluation.curves import HISTORY_COLUMNS
from medops.files import atomic_dir, write_csv


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "class"


def write_dvc_plots(flag: str, archs: list[str]) -> Path:
    """From each architecture's report folder (reports/<flag>/training/<arch>), test split."""
    out = paths.REPORTS / flag / "plots"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        for kind in ("history", "roc", "confusion"):
            (tmp / kind).mkdir()
        for arch in archs:
            report = paths.training_dir(flag) / arch
            if (report / "history.csv").exists():
                history = _rows(report / "history.csv")
                for metric in HISTORY_COLUMNS[1:]:
                    write_csv(tmp / "history" / f"{arch}_{metric}.csv", ("epoch", "value"),
                              ((h["epoch"], h[metric]) for h in history))
            if (report / "roc_test.csv").exists():
                curves = defaultdict(list)
                for row in _rows(report / "roc_test.csv"):
                    curves[row["class"]].append((row["fpr"], row["tpr"]))
                for name, points in curves.items():
                    write_csv(tmp / "roc" / f"{arch}_{_slug(name)}.csv", ("fpr", "tpr"), points)
            if (report / "confusion_test.csv").exists():
                write_csv(tmp / "confusion" / f"{arch}.csv", ("actual", "predicted"),
                          ((r["actual"], r["predicted"]) for r in _rows(report / "confusion_test.csv")))
    return out
