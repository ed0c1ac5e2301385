import pytest
import torch
from torch import nn

from medops.training.averaging import WeightAverage, ema_decay


def test_decay_halves_the_weight_after_the_half_life():
    assert ema_decay(2.0, 50) ** 100 == pytest.approx(0.5)
    assert ema_decay(0.5, 10) ** 5 == pytest.approx(0.5)


def test_average_follows_the_warm_up_rule_and_counts_batches_as_the_model():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    average = WeightAverage(model, half_life_epochs=10.0, steps_per_epoch=100)  # decay ~0.9993
    expected = model[0].weight.detach().clone()
    for step in range(4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.randn(4, 2))  # moves BN statistics and its batch counter
        average.update(model)
        if step == 0:  # the first update copies the model
            expected = model[0].weight.detach().clone()
        else:  # then decay min(d, (1 + t) / (10 + t)), t the updates so far
            decay = min(average.decay, (1 + step) / (10 + step))
            expected = decay * expected + (1 - decay) * model[0].weight.detach()
    assert torch.allclose(average.module[0].weight, expected)
    assert not torch.allclose(average.module[0].weight, model[0].weight)
    assert average.module[1].num_batches_tracked == model[1].num_batches_tracked == 4
    assert not torch.allclose(average.module[1].running_mean, model[1].running_mean)

    restored = WeightAverage(model, half_life_epochs=10.0, steps_per_epoch=100)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 4 and torch.equal(restored.module[0].weight, average.module[0].weight)
