"""The promotion gate against a real MLflow registry (SQLite store)."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from medops.lifecycle import model_registry as registry

from medops.lifecycle import tracking
from medops.config import MlflowParams
from medops.errors import MedopsError, redact
from medops.release.inference import InferenceModel
from medops.training.models import InputSpec, build_model


@pytest.fixture
def store(project):
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), "pathmnist")
    model = InferenceModel(build_model("baseline_cnn", InputSpec(1, 2, 28, False)), [0.5], [0.2], 1, False,
                           "binary-class").eval()
    example = np.zeros((2, 28, 28), np.uint8)
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                        signature=mlflow.models.infer_signature(example, np.zeros((2, 2), np.float32)),
                                        serialization_format="pt2", pip_requirements=["torch"])
    yield info.model_uri, run.info.run_id
    mlflow.set_tracking_uri(None)


def add(store, val_auc, eligible=True):
    uri, run_id = store
    return registry.register("pathmnist", uri, run_id, {"val_auc": str(val_auc), "eligible": str(eligible).lower()}).version


def champion():
    return MlflowClient().get_model_version_by_alias("pathmnist-classifier", "champion")


def test_gate_promotes_only_better_eligible_versions(store):
    v1 = add(store, 0.80)
    assert registry.promote("pathmnist").moved and champion().version == v1
    assert champion().tags["previous_champion"] == "none"

    add(store, 0.75)  # worse
    result = registry.promote("pathmnist")
    assert not result.moved and champion().version == v1

    add(store, 0.99, eligible=False)  # failed evaluation: never champion, even if its number is best
    assert not registry.promote("pathmnist").moved and champion().version == v1

    v4 = add(store, 0.90)
    assert registry.promote("pathmnist").moved and champion().version == v4
    tags = champion().tags
    assert tags["previous_champion"] == str(v1) and "promoted_at" in tags and "val_auc 0.9000 > 0.8000" in tags["promotion_reason"]
    challenger = MlflowClient().get_model_version_by_alias("pathmnist-classifier", "challenger")
    assert challenger.version == v4


def test_min_delta_keeps_the_champion(store):
    v1 = add(store, 0.80)
    registry.promote("pathmnist")
    add(store, 0.805)
    result = registry.promote("pathmnist", min_delta=0.01)
    assert not result.moved and "does not beat champion" in result.reason
    assert champion().version == v1


def test_manual_promotion_and_rollback(store):
    v1 = add(store, 0.80)
    registry.promote("pathmnist")
    v2 = add(store, 0.70)
    registry.set_champion("pathmnist", v2)
    assert champion().version == v2 and champion().tags["promotion_reason"] == "set by hand"
    registry.rollback("pathmnist")
    assert champion().version == v1
    assert "rolled_back_at" in MlflowClient().get_model_version("pathmnist-classifier", v2).tags
    with pytest.raises(MedopsError, match="replaced no earlier champion"):
        registry.rollback("pathmnist")
    assert champion().version == v1


def test_refusals_never_move_the_alias(store):
    v1 = add(store, 0.80)
    registry.promote("pathmnist")
    bad = add(store, 0.95, eligible=False)
    with pytest.raises(MedopsError, match=f"v{bad} is not eligible"):
        registry.set_champion("pathmnist", bad)
    with pytest.raises(MedopsError, match="has no version 99"):
        registry.set_champion("pathmnist", "99")
    assert champion().version == v1


def test_registered_model_loads_by_alias_and_predicts_any_batch(store):
    add(store, 0.8)
    registry.promote("pathmnist")
    model = mlflow.pyfunc.load_model("models:/pathmnist-classifier@champion")
    for n in (1, 5):
        out = model.predict(np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8))
        assert out.shape == (n, 2) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_unreachable_tracking_server_is_a_clear_error(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    tracking.configure(MlflowParams(tracking_uri="http://user:secret@127.0.0.1:9"))
    with pytest.raises(MedopsError, match=r"127\.0\.0\.1:9 is unreachable.*nothing was logged") as err:
        tracking.use_experiment(MlflowParams(), "pathmnist")
    assert "secret" not in str(err.value) and "user:***@" in str(err.value)
    mlflow.set_tracking_uri(None)


def test_redact():
    assert redact("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
