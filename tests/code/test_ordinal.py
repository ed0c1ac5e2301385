"""Soft ordinal targets for ordinal tasks (RetinaMNIST's grades), and only there."""

import pytest
import torch
from torch import nn

from medops.task_rules import MULTI_LABEL, ORDINAL, SoftOrdinalLoss, loss_function


def test_targets_peak_at_the_grade_and_fall_with_distance():
    q = SoftOrdinalLoss(tau=1.0).targets(torch.tensor([0, 2, 4]), n_classes=5)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert q.argmax(1).tolist() == [0, 2, 4]
    middle = q[1]
    assert middle[1] == pytest.approx(middle[3]) and middle[0] == pytest.approx(middle[4])  # symmetric
    assert middle[2] > middle[1] > middle[0] > 0


def test_a_near_grade_costs_less_than_a_far_one():
    loss = SoftOrdinalLoss(tau=1.0)
    label = torch.tensor([2])
    near, far = torch.tensor([[0.0, 0.0, 0.0, 4.0, 0.0]]), torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0]])
    assert loss(near, label) < loss(far, label)
    plain = nn.CrossEntropyLoss()
    assert plain(near, label) == pytest.approx(float(plain(far, label)))  # plain cross-entropy cannot tell


def test_a_small_temperature_is_plain_cross_entropy_and_weights_apply_per_class():
    logits, labels = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 2])
    weights = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0])
    assert float(SoftOrdinalLoss(1e-3, weights)(logits, labels)) == pytest.approx(
        float(nn.functional.cross_entropy(logits, labels, weight=weights, reduction="sum") / len(labels)), rel=1e-5)


def test_only_ordinal_tasks_get_soft_targets():
    assert isinstance(loss_function(ORDINAL, None, 0.5), SoftOrdinalLoss)
    assert type(loss_function(ORDINAL, None, 0.0)) is nn.CrossEntropyLoss
    assert type(loss_function("multi-class", None, 0.5)) is nn.CrossEntropyLoss
    assert type(loss_function(MULTI_LABEL, None, 0.5)) is nn.BCEWithLogitsLoss


@pytest.mark.parametrize("flag,applies", [("retinamnist", True), ("dermamnist", False)])
def test_the_trainer_uses_soft_targets_on_ordinal_sets_only(project, flag, applies):
    from medops.training.loop import train
    from tests.conftest import fast_recipe, make_processed

    processed = make_processed(flag, samples=16)
    losses = [train(processed, fast_recipe(epochs=1, ordinal_smoothing=tau, channels_last=False, resume=False),
                    project / str(tau)).history[0]["train_loss"] for tau in (0.0, 1.0)]
    assert (losses[0] != pytest.approx(losses[1], rel=1e-4)) == applies
