"""Which epoch a run keeps (`train.select`): the latest within one standard error of the peak,
or the peak itself; and how long a run goes on once validation has left its peak."""

import math

import pytest

from medops.training.scoring import EpochSelector

# an early peak (epoch 2), later epochs close to it, then a clear drop
SCORES = [0.80, 0.90, 0.88, 0.89, 0.70]


def kept_epochs(selector: EpochSelector, scores=SCORES) -> list[int]:
    return [epoch for epoch, score in enumerate(scores, 1) if selector.keeps(score, first=epoch == 1)]


def test_one_se_keeps_the_latest_epoch_within_the_noise_of_a_small_validation_split():
    # 78 images (BreastMNIST's validation split): one standard error at 0.90 is 0.034
    selector = EpochSelector("one_se", "auc+acc", n_val=78)
    assert kept_epochs(selector) == [1, 2, 3, 4]
    assert selector.peak == 0.90
    assert selector.tolerance() == pytest.approx(math.sqrt(0.9 * 0.1 / 78))


def test_a_large_validation_split_keeps_only_what_it_can_tell_apart():
    # 10,000 images: one standard error is 0.003, so 0.88 and 0.89 are clearly below 0.90
    assert kept_epochs(EpochSelector("one_se", "auc+acc", n_val=10_000)) == [1, 2]


def test_best_keeps_the_single_highest_epoch_and_the_first_of_a_tie():
    assert kept_epochs(EpochSelector("best", "auc", n_val=78)) == [1, 2]
    assert kept_epochs(EpochSelector("best", "auc", n_val=78), [0.5, 0.7, 0.7]) == [1, 2]


def test_a_loss_has_no_standard_error_so_its_best_epoch_is_kept():
    selector = EpochSelector("one_se", "loss", n_val=78)
    assert kept_epochs(selector, [-0.6, -0.4, -0.41, -0.5]) == [1, 2]
    assert selector.tolerance() == 0


def test_an_undefined_score_never_widens_the_tolerance():
    selector = EpochSelector("one_se", "auc", n_val=78)
    assert selector.keeps(-math.inf, first=True) and selector.tolerance() == 0
    assert selector.keeps(0.6, first=False) and not selector.keeps(-math.inf, first=False)
