"""The registered pyfunc: in process, behind `mlflow models serve`, and from `medops predict/explain`."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from medmnist import INFO
from mlflow.exceptions import MlflowException
from PIL import Image
from typer.testing import CliRunner

from medops.lifecycle import model_registry as registry

from medops.lifecycle import tracking
from medops.training.checkpoint import model_from_checkpoint
from medops.cli import app
from medops.config import MlflowParams
from medops.release.inference import InferenceModel
from medops.release.pyfunc import Classifier, log_classifier
from medops.training.loop import train
from medops.cluster import free_port
from tests.conftest import fast_recipe, make_processed, wait_for_http, write_params

FLAG = "pneumoniamnist"
URI = f"models:/{FLAG}-classifier@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained model logged as the pyfunc, registered and made champion in a SQLite store."""
    root = tmp_path_factory.mktemp("serving")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        processed = make_processed(FLAG, samples=32)
        checkpoint = train(processed, fast_recipe(epochs=1), root / "model").checkpoint
        db = f"sqlite:///{root / 'mlflow.db'}"
        tracking.configure(MlflowParams(tracking_uri=db))
        tracking.use_experiment(MlflowParams(), FLAG)
        example = np.load(root / "data/raw" / f"{FLAG}.npz")["test_images"]
        with mlflow.start_run() as run:
            info = log_classifier(checkpoint, example[:2])
        registry.register(FLAG, info.model_uri, run.info.run_id, {"val_auc": "0.9", "eligible": "true"})
        registry.promote(FLAG)
        write_params(root / "params.yaml", {FLAG: {"size": 28, "source": "custom"}}, mlflow={"tracking_uri": db})
        yield {"root": root, "db": db, "checkpoint": checkpoint, "images": example}
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(cwd)


def reference(checkpoint, images: np.ndarray) -> np.ndarray:
    model, ckpt = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        return InferenceModel.from_checkpoint(ckpt, model)(torch.from_numpy(images)).numpy()


def test_pyfunc_returns_probabilities_labels_and_class_names(served):
    mlflow.set_tracking_uri(served["db"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mlflow.pyfunc.load_model(URI)
    assert not [w for w in caught if "type hints" in str(w.message)]  # loads without MLflow's nag
    table = model.predict(served["images"][:5])
    probs = table[["p_normal", "p_pneumonia"]].to_numpy()
    assert np.allclose(probs, reference(served["checkpoint"], served["images"][:5]), atol=1e-6)
    assert list(table.label) == list(probs.argmax(1))
    assert list(table.class_name) == [INFO[FLAG]["label"][str(i)] for i in probs.argmax(1)]


BAD = {
    "wrong size": (np.zeros((2, 64, 64), np.uint8), r"shape \(28, 28\)"),
    "wrong channels": (np.zeros((2, 28, 28, 3), np.uint8), r"shape \(28, 28\)"),
    "wrong shape": (np.zeros((2, 20, 28), np.uint8), r"shape \(28, 28\)"),
    "float pixels": (np.zeros((2, 28, 28), np.float32), "uint8"),
    "out of range": (np.full((1, 28, 28), 300, np.int64), "0-255"),
    "empty batch": (np.zeros((0, 28, 28), np.uint8), "empty batch"),
    "oversized batch": (np.zeros((5, 28, 28), np.uint8), "larger than the limit of 4"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_payloads_are_refused_with_what_was_expected(served, case):
    images, message = BAD[case]
    model = Classifier().load(served["checkpoint"], max_batch=4)
    with pytest.raises(MlflowException, match=message) as info:
        model.predict(None, images)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"  # served as HTTP 400


def _post(port: int, payload) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_the_in_process_model(served):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served["db"],  # the server execs uvicorn from this env
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=served["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, "mlflow models serve")
        images = served["images"][:8]
        status, body = _post(port, {"inputs": images.tolist()})
        assert status == 200
        rows = body["predictions"]
        probs = np.array([[r["p_normal"], r["p_pneumonia"]] for r in rows])
        assert np.allclose(probs, reference(served["checkpoint"], images), atol=1e-5)
        assert [r["class_name"] for r in rows] == [INFO[FLAG]["label"][str(i)] for i in probs.argmax(1)]

        for bad in (np.zeros((2, 64, 64), int).tolist(), [[[0.5] * 28] * 28], [], np.zeros((2, 28, 28, 3), int).tolist()):
            status, body = _post(port, {"inputs": bad})
            assert 400 <= status < 500, (status, body)
            assert body.get("message")
        assert _post(port, {"inputs": images[:1].tolist()})[0] == 200  # still serving after bad requests
    finally:
        server.terminate()
        server.wait(30)


def test_predict_command_prints_a_table_and_writes_csv(served, tmp_path, monkeypatch):
    monkeypatch.chdir(served["root"])
    images = served["images"][:3]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"x{i}.png")
    np.savez(tmp_path / "batch.npz", images=images)
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", "-m", URI, *(str(tmp_path / f"x{i}.png") for i in range(3)),
                                      str(tmp_path / "batch.npz"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "p_pneumonia" in result.output and "x0.png" in result.output
    import pandas as pd

    table = pd.read_csv(out)
    probs = table[["p_normal", "p_pneumonia"]].to_numpy()
    expected = reference(served["checkpoint"], images)
    assert len(table) == 6 and np.allclose(probs[:3], expected, atol=1e-5) and np.allclose(probs[3:], expected, atol=1e-5)


def test_predict_command_refuses_an_image_of_another_size(served, tmp_path, monkeypatch):
    monkeypatch.chdir(served["root"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    result = CliRunner().invoke(app, ["predict", "-m", URI, str(tmp_path / "big.png")])
    assert result.exit_code == 1 and "big.png: image is 64x64, the model takes 28x28" in result.output


def test_explain_command_writes_a_gradcam_grid(served, tmp_path, monkeypatch):
    monkeypatch.chdir(served["root"])
    np.save(tmp_path / "few.npy", served["images"][:4])
    out = tmp_path / "cam.png"
    result = CliRunner().invoke(app, ["explain", "-m", URI, str(tmp_path / "few.npy"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
