"""An exponential moving average of the weights, the model that is validated and kept.

Small validation splits pick a checkpoint by a noisy score: the averaged weights move less
from epoch to epoch, so the epoch picked matters less. Built on torch's AveragedModel; batch-norm
statistics are averaged with the weights (`use_buffers`), so the average is a model in its own
right. The half-life is given in epochs, so one setting means the same on a set of 500 images
and on one of 50,000.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(half_life_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay whose weight halves after `half_life_epochs` epochs."""
    return 0.5 ** (1.0 / (half_life_epochs * max(steps_per_epoch, 1)))


class WeightAverage:
    """EMA of a training model, with a warm-up: decay min(d, (1 + t) / (10 + t)) at step t, so
    the first epochs' average is not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, half_life_epochs: float, steps_per_epoch: int):
        self.decay = ema_decay(half_life_epochs, steps_per_epoch)
        self.averaged = AveragedModel(model, multi_avg_fn=self._blend, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def steps(self) -> int:
        """Updates so far (AveragedModel keeps the count on the CPU: reading it needs no device sync)."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def _blend(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _) -> None:
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:  # batch counters: follow the model
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
