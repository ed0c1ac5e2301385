"""Behaviour of trained models, beyond their metrics: what a radiologist's sanity checks ask."""

import contextlib

import numpy as np
import pytest
import torch

from medops.config import DatasetParams
from medops.data.download import download
from medops.data.preprocess import preprocess
from medops.evaluation.forms import predict, raw_split
from medops.release.inference import load_form
from medops.training.loop import train
from medops.training.models.catalog import DEFAULT_ARCH
from tests.conftest import fast_recipe, make_processed


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory, official_mirror):
    """baseline_cnn on the official PneumoniaMNIST, 3 epochs with the default flips."""
    root = tmp_path_factory.mktemp("behaviour")
    ds = DatasetParams(size=28)
    processed = preprocess("pneumoniamnist", ds, download("pneumoniamnist", ds, official_mirror, root / "raw.npz"),
                           root / "processed")
    recipe = fast_recipe(epochs=3, batch_size=128, augment={"enabled": True, "rotation": 0, "shift": 0, "zoom": 0})
    return processed, load_form([train(processed, recipe, root / "model").checkpoint])


def test_a_horizontal_flip_barely_changes_the_prediction(pneumonia):
    processed, model = pneumonia
    x, _ = raw_split(processed, "test")
    plain, mirrored = predict(model, x), predict(model, x[:, :, ::-1])
    assert np.abs(plain - mirrored)[:, 1].mean() < 0.05
    assert (plain.argmax(1) == mirrored.argmax(1)).mean() > 0.95


def test_the_batch_an_image_arrives_in_does_not_change_its_prediction(pneumonia):
    processed, model = pneumonia
    x, _ = raw_split(processed, "test")
    alone = np.concatenate([predict(model, x[i:i + 1]) for i in range(16)])
    assert np.allclose(predict(model, x[:16]), alone, atol=1e-5)
    assert np.allclose(predict(model, x[:512], batch=512)[:16], alone, atol=1e-5)


@pytest.mark.parametrize("flag, n_train", [("pathmnist", 360), ("adrenalmnist3d", 120)])
def test_a_bright_patch_in_a_class_cell_is_recognised(tmp_path, flag, n_train):
    """Minimum functionality: on synthetic data where each class is a bright patch in its own
    cell and nothing else, a briefly trained model names the class of nearly every test image."""
    arch = DEFAULT_ARCH[flag.endswith("3d")]  # what a set listed by name only trains
    with contextlib.chdir(tmp_path):
        processed = make_processed(flag, samples={"train": n_train, "val": 40, "test": 120})
        checkpoint = train(processed, fast_recipe(arch=arch, epochs=4, batch_size=32), tmp_path / "m").checkpoint
        x, y = raw_split(processed, "test")
        with torch.inference_mode():
            accuracy = (predict(load_form([checkpoint]), x).argmax(1) == y.reshape(-1)).mean()
    assert accuracy > 0.9, accuracy
