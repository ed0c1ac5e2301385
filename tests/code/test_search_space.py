"""What a study searches: the augmentation knobs (strength, affine_p) and what they do, and the first trials' choices."""

import optuna
import pytest
import torch

from medops.config import AugmentParams, SearchDim, load_params
from medops.training import tune
from medops.training.augment import augment
from tests.conftest import REPO

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["adamw", "adam", "sgd"]},
    "augment.strength": {"type": "categorical", "choices": [1.0, 0.0]},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_strength_scales_rotation_shift_and_zoom_together():
    x = torch.rand(16, 1, 28, 28)
    scaled = AugmentParams(rotation=20, shift=0.1, zoom=0.1, strength=0.5)
    halved = AugmentParams(rotation=10, shift=0.05, zoom=0.05)
    assert torch.allclose(augment(x, scaled, _gen(), False), augment(x, halved, _gen(), False))
    flips_only = AugmentParams(rotation=20, shift=0.1, zoom=0.1, strength=0.0, hflip=1.0)
    assert torch.equal(augment(x, flips_only, _gen(), False), x.flip(-1))


def test_affine_p_moves_that_share_of_the_images_and_leaves_the_rest_untouched():
    x = torch.rand(400, 1, 28, 28)
    affine = {"rotation": 15, "shift": 0.1, "zoom": 0.1, "hflip": 0.0}
    out = augment(x, AugmentParams(**affine, affine_p=0.2), _gen(), False)
    untouched = (out == x).flatten(1).all(1)
    assert 290 < int(untouched.sum()) < 350  # about 80 % kept, and the others really moved
    moved_all = augment(x, AugmentParams(**affine, affine_p=1.0), _gen(), False)
    assert not (moved_all == x).flatten(1).all(1).any()


def test_affine_p_0_trains_what_flips_only_trains():
    x = torch.rand(64, 1, 28, 28)
    affine = {"rotation": 15, "shift": 0.1, "zoom": 0.1, "hflip": 0.5}
    none_moved = augment(x, AugmentParams(**affine, affine_p=0.0), _gen(), False)
    assert torch.equal(none_moved, augment(x, AugmentParams(**affine, strength=0.0), _gen(), False))
    assert not torch.equal(none_moved, x)  # the flips still happen


def test_affine_p_1_draws_nothing_more_so_recipes_that_move_every_image_train_as_before():
    x = torch.rand(8, 1, 28, 28)
    gen = _gen(3)
    augment(x, AugmentParams(affine_p=1.0, hflip=0.5), gen, False)
    expected = _gen(3)
    for _ in range(5):  # angle, zoom, two shifts, the flip coin: nothing for affine_p
        torch.rand(8, generator=expected)
    assert torch.equal(gen.get_state(), expected.get_state())


def test_strength_is_searched_only_where_it_changes_the_training():
    params = load_params(REPO / "params.yaml")
    params.tune.space["augment.strength"] = SearchDim(type="categorical", choices=[1.0, 0.0])
    default = params.recipe("pneumoniamnist", "baseline_cnn")
    assert "augment.strength" in tune.search_space(params.tune, default, "binary-class", is_3d=False)
    assert "augment.strength" not in tune.search_space(params.tune, default, "binary-class", is_3d=True)
    flips = tune.with_values(default, {"augment.rotation": 0, "augment.shift": 0, "augment.zoom": 0})
    assert "augment.strength" not in tune.search_space(params.tune, flips, "binary-class", is_3d=False)
    off = tune.with_values(default, {"augment.enabled": False})
    space = tune.search_space(params.tune, off, "binary-class", is_3d=False)
    assert "augment.strength" not in space and {"lr", "optimizer"} <= set(space)
    none_moved = tune.with_values(default, {"augment.affine_p": 0.0})
    assert "augment.strength" not in tune.search_space(params.tune, none_moved, "binary-class", is_3d=False)


def test_affine_p_is_searched_only_where_something_is_moved():
    params = load_params(REPO / "params.yaml")
    params.tune.space["augment.affine_p"] = SearchDim(type="categorical", choices=[0.5, 1.0])
    default = params.recipe("pneumoniamnist", "baseline_cnn")
    assert "augment.affine_p" in tune.search_space(params.tune, default, "binary-class", is_3d=False)
    flips = tune.with_values(default, {"augment.rotation": 0, "augment.shift": 0, "augment.zoom": 0})
    assert "augment.affine_p" not in tune.search_space(params.tune, flips, "binary-class", is_3d=False)


def _ask(study, space):
    trial = study.ask()
    values = tune.suggest(trial, {k: SearchDim.model_validate(v) for k, v in space.items()})
    study.tell(trial, values["lr"])
    return values


def test_trial_0_is_the_recipe_then_each_other_choice_in_turn_across_workers(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    recipe = {"optimizer": "adam", "augment.strength": 1.0, "lr": 0.003}
    # two workers, each with its own sampler seed, sharing the study
    workers = [optuna.load_study(study_name="s", storage=storage, sampler=tune.RecipeFirst(seed=s, recipe=recipe))
               for s in (7, 8)]
    picked = [_ask(workers[i % 2], SPACE) for i in range(6)]
    assert picked[0] == recipe
    assert [p["optimizer"] for p in picked[:3]] == ["adam", "adamw", "sgd"]
    assert [p["augment.strength"] for p in picked[:2]] == [1.0, 0.0]
    assert all(1e-4 <= p["lr"] <= 1e-2 for p in picked)
    assert len({p["lr"] for p in picked}) == 6  # after trial 0, numeric dimensions are sampled


def test_a_recipe_value_outside_the_space_is_sampled_instead(tmp_path):
    study = optuna.create_study(direction="maximize",
                                sampler=tune.RecipeFirst(seed=0, recipe={"optimizer": "rmsprop", "lr": 0.5}))
    first = _ask(study, SPACE)
    assert first["optimizer"] == "adamw" and 1e-4 <= first["lr"] <= 1e-2


@pytest.mark.parametrize("values, min_gain, expected", [
    ((0.900, 0.904, 0.890), 0.005, 0),  # within min_gain: the recipe as written stays
    ((0.900, 0.910, 0.890), 0.005, 1),  # a clear win replaces it
    ((0.900, 0.904, 0.890), 0.0, 1),
])
def test_the_recipe_as_written_is_replaced_only_by_a_clear_win(values, min_gain, expected):
    trials = []
    for number, value in enumerate(values):
        trial = optuna.trial.create_trial(value=value, user_attrs={"recipe_as_written": number == 0})
        trial.number = number
        trials.append(trial)
    assert tune.best_trial(trials, min_gain).number == expected
    unmarked = [optuna.trial.create_trial(value=v) for v in values]
    assert tune.best_trial(unmarked, 1.0).value == max(values)
