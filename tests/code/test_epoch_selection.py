"""Which epoch a run keeps (`train.select`): the latest within one standard error of the peak,
or the peak itself; and how long a run goes on once validation has left its peak."""

import math

import pytest

from medops.training.scoring import EpochSelector

# an early peak (epoch 2), later epochs close to it, then a clear drop
SCORES = [0.80, 0.90, 0.88, 0.89, 0.70]


def kept_epochs(selector: EpochSelector, scores=SCORES) -> list[int]:
    return [epoch for epoch, score in enumerate(scores, 1) if selector.observe(epoch, score)]


def test_one_se_keeps_the_latest_epoch_within_the_noise_of_a_small_validation_split():
    # 78 images (BreastMNIST's validation split): one standard error at 0.90 is 0.034
    selector = EpochSelector("one_se", "auc+acc", n_val=78, patience=10)
    assert kept_epochs(selector) == [1, 2, 3, 4]
    assert selector.peak == 0.90
    assert selector.tolerance() == pytest.approx(math.sqrt(0.9 * 0.1 / 78))


def test_a_large_validation_split_keeps_only_what_it_can_tell_apart():
    # 10,000 images: one standard error is 0.003, so 0.88 and 0.89 are clearly below 0.90
    assert kept_epochs(EpochSelector("one_se", "auc+acc", n_val=10_000, patience=10)) == [1, 2]


def test_best_keeps_the_single_highest_epoch_and_the_first_of_a_tie():
    assert kept_epochs(EpochSelector("best", "auc", n_val=78, patience=10)) == [1, 2]
    assert kept_epochs(EpochSelector("best", "auc", n_val=78, patience=10), [0.5, 0.7, 0.7]) == [1, 2]


def test_a_loss_has_no_standard_error_so_its_best_epoch_is_kept():
    selector = EpochSelector("one_se", "loss", n_val=78, patience=10)
    assert kept_epochs(selector, [-0.6, -0.4, -0.41, -0.5]) == [1, 2]
    assert selector.tolerance() == 0


def test_an_undefined_score_never_widens_the_tolerance():
    selector = EpochSelector("one_se", "auc", n_val=78, patience=10)
    assert selector.observe(1, -math.inf) and selector.tolerance() == 0
    assert selector.observe(2, 0.6) and not selector.observe(3, -math.inf)


def test_only_epochs_outside_the_noise_count_towards_stopping():
    selector = EpochSelector("one_se", "auc+acc", n_val=78, patience=2)
    for epoch, score in enumerate([0.80, 0.90, 0.88, 0.70], 1):
        selector.observe(epoch, score)
    assert (selector.best_epoch, selector.bad_epochs, selector.stopped) == (3, 1, False)  # 0.88 is within the noise
    selector.observe(5, 0.71)
    assert selector.stopped and selector.best_epoch == 3 and selector.best_score == 0.88
    best = EpochSelector("best", "auc+acc", n_val=78, patience=2)
    for epoch, score in enumerate([0.80, 0.90, 0.88, 0.70], 1):
        best.observe(epoch, score)
    assert best.stopped and best.best_epoch == 2  # 0.88 counted against it


def test_a_restored_selector_goes_on_as_the_one_it_was_saved_from():
    scores = [0.80, 0.90, 0.87, 0.70, 0.89, 0.60, 0.60]
    whole = EpochSelector("one_se", "auc+acc", n_val=78, patience=3)
    kept_whole = [whole.observe(epoch, score) for epoch, score in enumerate(scores, 1)]
    first = EpochSelector("one_se", "auc+acc", n_val=78, patience=3)
    kept = [first.observe(epoch, score) for epoch, score in enumerate(scores[:4], 1)]
    resumed = EpochSelector("one_se", "auc+acc", n_val=78, patience=3)
    resumed.restore(first.state())
    kept += [resumed.observe(epoch, score) for epoch, score in enumerate(scores[4:], 5)]
    assert kept == kept_whole and resumed.state() == whole.state()
    assert resumed.best_epoch == 5 and resumed.peak == 0.90
