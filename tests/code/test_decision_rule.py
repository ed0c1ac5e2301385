"""The default decision rule on imbalanced data: a class-weighted model whose prior is undone
at prediction time (logit adjustment) is as accurate as unweighted cross-entropy and keeps
the weighted model's AUC; without the correction the weights cost accuracy."""

import numpy as np
import pytest
import torch

from medops.training.checkpoint import load_checkpoint, save_checkpoint
from medops.runs import evaluate_checkpoint
from medops.task_rules import (BINARY, MULTI_LABEL, choose_prior_strength, decision_rule, logit_offset,
                               predicted_labels, probabilities)
from medops.training.loop import train
from tests.conftest import fast_recipe, make_processed

# 5 classes, shares 60/20/10/6/4 %; 3D binary with 11 % positives (the shapes of the sets the
# default recipe was weak on); 14 labels positive in 2-20 % of images (ChestMNIST's shape). 60 %
# of the patches are drawn in a random class's cell, so that the posterior of an image with a
# rare class's patch still favours the majority class (for multi-label: the label's absence).
CASES = {
    "5-class ordinal RGB": ("retinamnist", {"train": 900, "val": 400, "test": 800}, [0.6, 0.2, 0.1, 0.06, 0.04],
                       dict(arch="baseline_cnn", epochs=6, batch_size=64)),
    "binary 3D": ("adrenalmnist3d", {"train": 200, "val": 300, "test": 400}, [0.89, 0.11],
                  dict(arch="cnn3d", epochs=5, batch_size=32)),
    "14-label multi-label": ("chestmnist", {"train": 900, "val": 400, "test": 800},
                             [0.2, 0.15, 0.1, 0.1, 0.08, 0.06, 0.05, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.02],
                             dict(arch="baseline_cnn", epochs=6, batch_size=64)),
}


def _test_metrics(checkpoint, processed, without_correction=False):
    if without_correction:  # the same weights, predicting with the tilt the class weights gave them
        state = load_checkpoint(checkpoint)
        save_checkpoint(checkpoint, {**state, "logit_offset": None})
    test = evaluate_checkpoint(checkpoint, processed, ("test",))["test"]["metrics"]
    return test["auc"], test["acc"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_weighted_training_with_prior_correction_is_as_accurate_as_unweighted(project, case):
    flag, samples, priors, recipe = CASES[case]
    processed = make_processed(flag, samples=samples, synth={"priors": priors, "ambiguity": 0.6})
    # monitor AUC: the same epochs are chosen with and without the correction, so the runs differ
    # only in the loss weights (and the weighted one only in its offset)
    recipe = dict(recipe, monitor="auc", lr=1e-3)
    weighted = train(processed, fast_recipe(**recipe), project / "weighted").checkpoint
    plain = train(processed, fast_recipe(**recipe, weighted_loss=False), project / "plain").checkpoint
    assert load_checkpoint(weighted)["prior_strength"] > 0  # validation saw what the weights cost
    auc_c, acc_c = _test_metrics(weighted, processed)
    _, acc_p = _test_metrics(plain, processed)
    auc_t, acc_t = _test_metrics(weighted, processed, without_correction=True)
    assert acc_c >= acc_p - 0.02, (acc_c, acc_p)
    assert auc_c >= auc_t - 0.01, (auc_c, auc_t)
    assert acc_t < acc_c - 0.02, (acc_t, acc_c)  # the class weights cost accuracy without the correction


def test_prior_correction_undoes_the_class_weights():
    """With weights w the loss's optimum is q(c|x) ~ w_c p(c|x): the offset returns p(c|x)."""
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    w = [0.5, 2.0, 4.0]
    tilted = p * torch.tensor(w)
    tilted_logits = torch.log(tilted / tilted.sum(1, keepdim=True))
    corrected = probabilities(tilted_logits, "multi-class", torch.tensor(logit_offset(w)))
    assert torch.allclose(corrected, p, atol=1e-6)
    assert logit_offset(None) is None and logit_offset([]) is None


def test_multi_label_correction_is_judged_on_every_label_decision():
    """Multi-label ACC is the mean over labels, 1,000 decisions for 100 images of 10 labels: a
    correction that gains 0.02 is past their standard error (0.009), though not past that of
    100 single decisions (0.03), and is chosen."""
    y_true = np.zeros((100, 10), dtype=int)

    def scores(false_positives: int) -> np.ndarray:
        s = np.full(y_true.size, 0.1)
        s[:false_positives] = 0.9
        return s.reshape(y_true.shape)

    by_strength = {0.0: scores(120), 0.5: scores(115), 1.0: scores(100)}  # ACC 0.880, 0.885, 0.900
    assert choose_prior_strength(y_true, by_strength, MULTI_LABEL) == 1.0
    # a single-label task: the same gain on 100 images is within one standard error, so the least
    # correction is kept (the hedge the rule is for)
    binary = {s: np.stack([1 - v[:, 0], v[:, 0]], 1) for s, v in by_strength.items()}
    assert choose_prior_strength(y_true[:, :1], binary, BINARY) == 0.0


def test_binary_rule_is_medmnists_threshold():
    scores = np.array([[0.5, 0.5], [0.49, 0.51], [0.9, 0.1]])
    assert predicted_labels(scores, BINARY).tolist() == [0, 1, 0]  # > 0.5, as getACC counts it
    assert "0.5 of the class-weight tilt" in decision_rule({"logit_offset": [0.1, -0.1], "prior_strength": 0.5}, BINARY)
    assert decision_rule({"logit_offset": None}, BINARY).startswith("score > 0.5 on the model")
