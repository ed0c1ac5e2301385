"""The registered model's form: the study's checkpoint alone, or the average of the seed runs'
probabilities, each with or without horizontal-flip test-time augmentation (TTA).

The form is chosen on validation, simplest first: a richer form replaces the current choice only
when its validation score (the recipe's `monitor`) is higher by more than `min_gain`. The study's
checkpoint was itself picked on validation among trials, so its own validation score flatters
it: a single model's score is the mean over the seed runs (the study's model and the retrains of
its recipe), and the registered single model is the study's. TTA is considered only for recipes that trained with
horizontal flips: a model never shown mirrored images has no reason to agree with itself on them.

Every form is one torch module with raw MedMNIST-layout uint8 images in and probabilities out,
so the pyfunc, ONNX export, int8 quantization and evaluation treat them alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medops.data.processed import load_split, read_meta
from medops.evaluation.metrics import compute_metrics
from medops.release.inference import load_form, to_medmnist_layout, width_axis
from medops.task_rules import cross_entropy
from medops.training.scoring import monitored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Form:
    checkpoints: tuple[Path, ...]  # the first is the study's best trial
    flip: bool = False

    @property
    def name(self) -> str:
        base = "single model" if len(self.checkpoints) == 1 else f"ensemble of {len(self.checkpoints)} seeds"
        return base + (" + flip TTA" if self.flip else "")

    def as_dict(self) -> dict:
        return {"name": self.name, "members": len(self.checkpoints), "flip_tta": self.flip,
                "checkpoints": [str(p) for p in self.checkpoints]}


def predict(module: torch.nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))).numpy()
                               for i in range(0, len(images), batch)])


def raw_split(processed: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(processed, split)
    return np.ascontiguousarray(to_medmnist_layout(x)), y


def form_metrics(y: np.ndarray, probs: np.ndarray, task: str, class_names: list[str]) -> dict:
    """compute_metrics plus the loss of the served probabilities (unweighted cross-entropy)."""
    return {**compute_metrics(y, probs, task, class_names), "loss": cross_entropy(y, probs, task)}


def choose_form(checkpoints: list[Path], processed: Path, monitor: str, flip_allowed: bool,
                min_gain: float) -> tuple[Form, list[dict]]:
    """The form to register and the validation score of every candidate (for the card and MLflow)."""
    meta = read_meta(processed)
    x, y = raw_split(processed, "val")
    members = [load_form([p]) for p in checkpoints]
    plain = [predict(m, x) for m in members]
    axis = width_axis(members[0].n_channels)
    flipped = [predict(m, np.flip(x, axis)) for m in members] if flip_allowed else []

    candidates = [Form(tuple(checkpoints[:1]))]
    if flip_allowed:
        candidates.append(Form(tuple(checkpoints[:1]), flip=True))
    if len(checkpoints) > 1:
        candidates.append(Form(tuple(checkpoints)))
        if flip_allowed:
            candidates.append(Form(tuple(checkpoints), flip=True))
    def score(probs: np.ndarray) -> tuple[float, float, float]:
        m = form_metrics(y, probs, meta.task, meta.class_names)
        return m["auc"], m["acc"], monitored({"val_auc": m["auc"], "val_acc": m["acc"], "val_loss": m["loss"]}, monitor)

    table = []
    for form in candidates:
        k = len(form.checkpoints)
        if k == 1 and len(checkpoints) > 1:
            # one model's validation score, as the mean over the seed runs: the study's own model
            # was chosen on validation among trials, so its own score flatters it
            auc, acc, value = np.mean([score(np.mean([p] + ([f] if form.flip else []), axis=0))
                                       for p, f in zip(plain, flipped or plain)], axis=0)
        else:
            auc, acc, value = score(np.mean(plain[:k] + (flipped[:k] if form.flip else []), axis=0))
        table.append({"form": form.name, "val_auc": float(auc), "val_acc": float(acc), "score": float(value)})
    chosen = 0
    for i in range(1, len(candidates)):  # simplest first: a richer form must win by more than min_gain
        if table[i]["score"] > table[chosen]["score"] + min_gain:
            chosen = i
    for i, row in enumerate(table):
        row["chosen"] = i == chosen
    log.info("registered form: %s (validation %s %s)", candidates[chosen].name, monitor,
             ", ".join(f"{r['form']}: {r['score']:.4f}" for r in table))
    return candidates[chosen], table


def evaluate_form(form: Form, processed: Path, splits=("val", "test")) -> dict:
    """Metrics and raw scores of the registered form on the given splits (as evaluate_checkpoint)."""
    meta = read_meta(processed)
    module = load_form(form.checkpoints, form.flip)
    results = {}
    for split in splits:
        x, y = raw_split(processed, split)
        probs = predict(module, x)
        results[split] = {"y": y, "scores": probs, "metrics": form_metrics(y, probs, meta.task, meta.class_names)}
    return results
