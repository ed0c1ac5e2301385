"""The registered form: the study's model alone or the average of the seed runs, with or without
flip test-time augmentation, chosen on validation; every form is one module that evaluates,
serves as a pyfunc (nothing unpickled) and quantizes."""

import contextlib

import mlflow
import numpy as np
import pytest
import torch

from medops.release import quantize

from medops.lifecycle import tracking
from medops.config import MlflowParams
from medops.evaluation.forms import choose_form, evaluate_form, Form, raw_split
from medops.runs import evaluate_checkpoint
from medops.release.inference import Ensemble, load_form, width_axis
from medops.training.loop import train
from tests.conftest import fast_recipe, make_processed

FLAG = "pneumoniamnist"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A near-untrained model (the first member) and two trained seeds on easy synthetic data."""
    root = tmp_path_factory.mktemp("ensemble")
    with contextlib.chdir(root):
        processed = make_processed(FLAG, samples={"train": 240, "val": 120, "test": 120})
        weak = train(processed, fast_recipe(epochs=1, lr=1e-7, seed=0), root / "weak").checkpoint
        strong = [train(processed, fast_recipe(epochs=3, seed=s), root / f"seed-{s}").checkpoint for s in (1, 2)]
        yield {"root": root, "processed": processed.resolve(), "weak": weak.resolve(),
               "strong": [p.resolve() for p in strong]}


def _probs(module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_ensemble_is_the_mean_over_members_and_mirror_images(trained):
    x, _ = raw_split(trained["processed"], "test")  # (N, H, W): gray, so the width is the last axis
    a, b = trained["strong"]
    single = [load_form([p]) for p in (a, b)]
    expected = np.mean([_probs(m, v) for m in single for v in (x, x[:, :, ::-1])], axis=0)
    assert np.allclose(_probs(load_form([a, b], flip=True), x), expected, atol=1e-6)
    assert not np.allclose(_probs(load_form([a, b], flip=True), x), _probs(load_form([a, b]), x), atol=1e-4)
    assert isinstance(load_form([a, b]), Ensemble) and not isinstance(load_form([a]), Ensemble)
    assert width_axis(3) == -2  # (N, H, W, C): the width sits before the channels


def test_a_single_form_evaluates_as_its_checkpoint(trained):
    a = trained["strong"][0]
    by_form = evaluate_form(Form((a,)), trained["processed"], ("test",))["test"]["metrics"]
    by_checkpoint = evaluate_checkpoint(a, trained["processed"], ("test",))["test"]["metrics"]
    assert by_form["auc"] == pytest.approx(by_checkpoint["auc"], abs=1e-6)
    assert by_form["acc"] == pytest.approx(by_checkpoint["acc"], abs=1e-9)


def test_the_ensemble_is_registered_only_when_it_wins_on_validation(trained):
    members = [trained["weak"], *trained["strong"]]
    form, table = choose_form(members, trained["processed"], "auc+acc", flip_allowed=True, min_gain=0.0)
    assert len(form.checkpoints) == 3  # the weak first member alone loses to the average with the seeds
    scores = {row["form"]: row["score"] for row in table}
    assert scores[form.name] == max(scores.values()) and sum(row["chosen"] for row in table) == 1
    assert set(scores) == {"single model", "single model + flip TTA", "ensemble of 3 seeds",
                           "ensemble of 3 seeds + flip TTA"}
    unreachable, _ = choose_form(members, trained["processed"], "auc+acc", flip_allowed=False, min_gain=1.0)
    assert unreachable == Form((trained["weak"],))  # nothing beats the simplest form by a whole point


def test_an_ensemble_serves_as_one_pyfunc_and_quantizes(trained, tmp_path):
    from medops.release.pyfunc import log_classifier

    members = trained["strong"]
    x, _ = raw_split(trained["processed"], "test")
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), FLAG)  # this store's own experiment, whatever ran before
    try:
        with mlflow.start_run():
            info = log_classifier(members, x[:2], flip=True)
        served = mlflow.pyfunc.load_model(info.model_uri).predict(x[:9])
    finally:
        mlflow.set_tracking_uri(None)
    expected = _probs(load_form(members, flip=True), x[:9])
    assert np.allclose(served[[c for c in served.columns if c.startswith("p_")]].to_numpy(), expected, atol=1e-6)

    report = quantize.quantize_checkpoint(members, trained["processed"], tmp_path / "q", calibration_size=64,
                                          seconds=0.05, qat_epochs=1, flip=True, qat_when="always")
    by_name = {v.name: v for v in report.variants}
    assert "int8 static" in by_name and "int8 qat" not in by_name  # QAT fine-tunes one network only
    assert f"QAT not run: the form averages {len(members)} networks and QAT fine-tunes one" in report.reason
    assert abs(by_name["fp32 onnx"].delta_auc) < 1e-4  # the exported graph is the whole ensemble
    onnx_probs = quantize.onnx_predictor(tmp_path / "q" / quantize.FP32_ONNX)(x[:9])
    assert np.allclose(onnx_probs, expected, atol=1e-5)
