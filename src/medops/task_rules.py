"""What a MedMNIST task type means for a model: its loss, its output activation, its predicted
label and the prior correction. One home, used by training, evaluation, serving and Grad-CAM.

Prior correction: a model trained with class weights w_c (or BCE pos_weight w_l) learns
posteriors tilted by w: q(c|x) ~ w_c p(c|x). Subtracting log w_c from its logits undoes the tilt
(logit adjustment), so the probabilities estimate p(c|x) under the training prior again and the
plain decision rule (argmax; MedMNIST's 0.5 threshold for binary and multi-label) maximises
accuracy at that prior. Ranking within a class is unchanged, so binary and per-label AUC are too.

How much of the tilt to undo is chosen on validation (choose_prior_strength): none (the
balanced rule the weights give), half, or all of it, by the one-standard-error rule: the least
correction whose validation ACC is within one standard error of the best. Less correction is
the safer choice when the prior where the model is used may differ from the training prior
(PneumoniaMNIST's and OCTMNIST's test splits are balanced differently from their training
splits); full correction wins where the weights clearly cost accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from medops.data.info import BINARY, MULTI_LABEL, ORDINAL  # the task types, as INFO spells them
THRESHOLD = 0.5  # MedMNIST's getACC: a binary or multi-label score counts as positive above it


def loss_function(task: str, weights: torch.Tensor | None, ordinal_smoothing: float = 0.0) -> nn.Module:
    """The training loss; `ordinal_smoothing` > 0 on an ordinal task: soft ordinal targets."""
    if task == MULTI_LABEL:
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    if task == ORDINAL and ordinal_smoothing > 0:
        return SoftOrdinalLoss(ordinal_smoothing, weights)
    return nn.CrossEntropyLoss(weight=weights)


class SoftOrdinalLoss(nn.Module):
    """Cross-entropy against soft ordinal targets (SORD, Diaz & Marathe, CVPR 2019): a grade-i
    image is taught q_j ~ exp(-(i - j)^2 / tau), so calling grade 2 a 3 costs less than calling it
    a 0. The model still outputs one probability per class, so AUC, ACC, serving, int8 and
    Grad-CAM treat it like any classifier; class weights apply per class as in weighted
    cross-entropy (the prior correction stays valid: the optimum is still tilted by w)."""

    def __init__(self, tau: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.tau, self.weight = tau, weight

    def targets(self, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
        grades = torch.arange(n_classes, device=labels.device, dtype=torch.float32)
        distance = (labels.view(-1, 1).float() - grades.view(1, -1)) ** 2
        return torch.softmax(-distance / self.tau, dim=1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, self.targets(labels, logits.shape[1]), weight=self.weight)


def logit_offset(class_weights: list[float] | None) -> list[float] | None:
    """What to add to the logits of a model trained with these loss weights (None: nothing)."""
    if not class_weights:
        return None
    return [-float(np.log(w)) for w in class_weights]


PRIOR_STRENGTHS = (0.0, 0.5, 1.0)  # share of the class-weight tilt undone, least first


def binomial_standard_error(value: float, n: int) -> float:
    """One standard error of a score in [0, 1] measured on n decisions (images; images x labels
    for multi-label ACC): the noise yardstick of the decision rule's correction and of the kept
    epoch (training/scoring.EpochSelector)."""
    value = min(max(value, 0.0), 1.0)
    return math.sqrt(max(value * (1 - value), 1e-12) / max(n, 1))


def choose_prior_strength(y_true: np.ndarray, scores_by_strength: dict[float, np.ndarray], task: str) -> float:
    """The least correction whose validation ACC is within one standard error of the best."""
    from medmnist.evaluator import getACC

    acc = {s: float(getACC(y_true, scores, task)) for s, scores in scores_by_strength.items()}
    best = max(acc.values())
    # ACC counts one decision per image, or one per image and label for multi-label (the mean of
    # the labels' accuracies): the standard error is that of this many decisions
    decisions = y_true.size if task == MULTI_LABEL else len(y_true)
    return min(s for s, a in acc.items() if a >= best - binomial_standard_error(best, decisions))


def probabilities(logits: torch.Tensor, task: str, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Logits -> probabilities: sigmoid per label for multi-label, softmax over classes otherwise."""
    if offset is not None:
        logits = logits + offset
    return torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=1)


def decision_rule(checkpoint: dict, task: str) -> str:
    """How a checkpoint's predicted labels (and so its ACC) are decided, in words."""
    rule = f"score > {THRESHOLD}" if task in (BINARY, MULTI_LABEL) else "argmax"  # MedMNIST's getACC
    if checkpoint.get("logit_offset") is None:
        return f"{rule} on the model's probabilities (MedMNIST's ACC rule)"
    strength = checkpoint.get("prior_strength", 1.0)
    return (f"{rule} (MedMNIST's ACC rule) on probabilities with {strength:g} of the class-weight tilt undone "
            "(logit adjustment; the share chosen on validation: 0 keeps the balanced rule of the weighted loss)")


def predicted_labels(scores: np.ndarray, task: str) -> np.ndarray:
    """Class index per image, or a 0/1 row per image for multi-label (MedMNIST's ACC rule)."""
    if task == MULTI_LABEL:
        return (scores > THRESHOLD).astype(int)
    if task == BINARY:
        return (scores[:, -1] > THRESHOLD).astype(int)
    return scores.argmax(1)


def cross_entropy(y_true: np.ndarray, probs: np.ndarray, task: str, eps: float = 1e-7) -> float:
    """Mean unweighted cross-entropy of probabilities (per label for multi-label): the loss of
    what is served, for forms that average several models' probabilities."""
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    if task == MULTI_LABEL:
        return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(p)), y_true.reshape(-1).astype(int)])))
