"""How a model is scored on a split during training: probabilities over whole-split batches,
MedMNIST's AUC and ACC, and the monitored value that early stopping, checkpoints, studies and
the registered form's choice maximise. Evaluation and release build on these; nothing here plots."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.exceptions import UndefinedMetricWarning

from medops.task_rules import binomial_standard_error, loss_function, probabilities
from medops.training.batches import Normalizer, SplitTensors, batches


@torch.no_grad()
def predict_scores(model, data: SplitTensors, norm: Normalizer, task: str, batch_size: int = 1024,
                   autocast_dtype: torch.dtype | None = None,
                   offset: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
    """(probabilities N x K, mean unweighted loss) in evaluation mode; `offset` is the prior
    correction of a model trained with class weights (task_rules.logit_offset)."""
    model.eval()
    loss_fn = loss_function(task, None)
    scores, total = [], 0.0
    device = data.x.device
    for idx in batches(len(data), batch_size):
        idx = idx.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(norm(data.x[idx])).float()
        if offset is not None:
            logits = logits + offset
        total += float(loss_fn(logits, data.y[idx])) * len(idx)
        scores.append(probabilities(logits, task))
    return torch.cat(scores).cpu().numpy(), total / max(len(data), 1)


def safe_metric(fn, *args):
    """AUC is undefined when a split lacks a class: report NaN instead of failing the run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        try:
            return float(fn(*args))
        except ValueError:
            return math.nan


def auc_and_acc(y_true: np.ndarray, scores: np.ndarray, task: str) -> tuple[float, float]:
    """AUC and ACC by MedMNIST's definitions (NaN AUC when a class is absent)."""
    return safe_metric(getAUC, y_true, scores, task), float(getACC(y_true, scores, task))


def quick_metrics(data: SplitTensors, scores, task: str) -> tuple[float, float]:
    """Validation AUC and ACC by MedMNIST's definitions (NaN AUC when a class is absent)."""
    return auc_and_acc(data.y.cpu().numpy(), scores, task)


def monitored(record: dict, monitor: str) -> float:
    """The validation value early stopping, checkpoint selection and studies maximise.
    auc+acc is their mean: AUC alone picks epochs whose accuracy is poor, and ACC alone is coarse
    on small validation splits."""
    auc, acc = record["val_auc"], record["val_acc"]
    return {"auc": auc, "acc": acc, "auc+acc": (auc + acc) / 2, "loss": -record["val_loss"]}[monitor]


def windowed(history: list[dict], monitor: str, window: int) -> float:
    """The monitored value averaged over the last `window` epochs of `history` (a NaN counts as
    the worst value, so an epoch with an undefined AUC is never selected)."""
    values = [monitored(record, monitor) for record in history[-window:]]
    values = [-math.inf if math.isnan(v) else v for v in values]
    return sum(values) / len(values)


class EpochSelector:
    """Which epoch's weights a run keeps, and when it has been worse for long enough to stop.

    `best` keeps the single highest monitored value. `one_se` (the default) keeps the latest
    epoch whose value is within one standard error of the highest so far: the maximum over many
    epochs scored on one small validation split is mostly that split's noise (BreastMNIST's 78
    images picked epoch 7 of 100 in one seed), while the late epochs of a cosine schedule are the
    converged ones. The standard error is the binomial one of the peak on the validation split's
    n images (the prior-correction choice uses the same yardstick, counting each label's decision
    for multi-label ACC; task_rules), for AUC too, whose noise is no smaller; a loss has no such
    scale, so `loss` keeps the best epoch. Epochs count towards early stopping (`patience`) only
    while they are clearly worse, so a run stops when validation has left its peak by more than
    the noise. The trainer and bench/selection.py both run their epochs through this one object.
    """

    def __init__(self, select: str, monitor: str, n_val: int, patience: int):
        self.select, self.monitor, self.n_val, self.patience = select, monitor, n_val, patience
        self.peak = self.best_score = -math.inf
        self.best_epoch = self.bad_epochs = 0  # best_epoch 0: nothing kept yet

    def tolerance(self) -> float:
        if self.select == "best" or self.monitor == "loss" or not math.isfinite(self.peak):
            return 0.0
        return binomial_standard_error(self.peak, self.n_val)

    def observe(self, epoch: int, score: float) -> bool:
        """Record this epoch's (windowed) score; True when its weights are the ones to keep."""
        if self.best_epoch == 0 or score > self.peak:
            self.peak = score
            kept = True
        else:
            tolerance = self.tolerance()
            kept = tolerance > 0 and score >= self.peak - tolerance
        if kept:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return kept

    @property
    def stopped(self) -> bool:
        """Worse than the kept epoch, beyond the noise, for `patience` epochs in a row."""
        return self.bad_epochs >= self.patience

    def state(self) -> dict:
        """What a checkpoint records so that a resumed run selects and stops as this one would."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "peak_score": self.peak}

    def restore(self, state: dict) -> None:
        self.best_score, self.best_epoch, self.bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        self.peak = state.get("peak_score", self.best_score)  # checkpoints from before one_se
