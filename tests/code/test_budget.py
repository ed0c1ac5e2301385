"""`epochs: auto` / `patience: auto`: the budget follows the training split, never the name."""

import pytest

from medops.config import ConfigError, load_params
from medops.training.budget import MAX_EPOCHS, MIN_EPOCHS, auto_epochs, auto_patience, resolve_budget
from tests.conftest import write_params


def test_small_sets_get_more_passes_and_large_sets_fewer():
    assert auto_epochs(546, 64, is_3d=False) == MAX_EPOCHS  # BreastMNIST-sized: 9 steps an epoch
    assert auto_epochs(4708, 64, is_3d=False) == 28  # PneumoniaMNIST-sized: ceil(2000 / 74)
    assert auto_epochs(4708, 128, is_3d=False) == 55  # half the steps per epoch: about twice the epochs
    assert auto_epochs(90_000, 64, is_3d=False) == MIN_EPOCHS  # PathMNIST-sized
    assert auto_epochs(1188, 64, is_3d=True) == 32 < auto_epochs(1188, 64, is_3d=False)  # a 3D step costs more


def test_patience_follows_the_epochs_a_run_trains_for():
    assert auto_patience(100) == 33 and auto_patience(45) == 15 and auto_patience(28) == 10
    assert resolve_budget("auto", "auto", 546, 64, False) == (100, 33)
    assert resolve_budget(12, "auto", 546, 64, False) == (12, 10)  # a given number stays as given
    assert resolve_budget("auto", 3, 546, 64, False) == (100, 3)


def test_budget_is_auto_or_a_positive_number(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", {"breastmnist": {}}))
    assert (params.train.epochs, params.train.patience) == ("auto", "auto")  # the shipped default
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_params(write_params(tmp_path / "params.yaml", {"breastmnist": {}}, train={"epochs": "lots"}))
    with pytest.raises(ConfigError, match=r"train\.patience"):
        load_params(write_params(tmp_path / "params.yaml", {"breastmnist": {}}, train={"patience": 0}))
