"""The registered model: an MLflow pyfunc over a medops checkpoint.

Takes raw images in the MedMNIST npz layout (uint8; one image or a batch), applies the
training preprocessing inside (InferenceModel; an Ensemble of them when that form won on validation) and returns one row per image: the predicted
label, its class name from INFO and one probability column per class. Bad payloads raise
MlflowException(INVALID_PARAMETER_VALUE), which `mlflow models serve` answers with HTTP 400.

Logged as a model from code (pyfunc_entry.py), so loading it unpickles nothing; the
checkpoint itself loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
import warnings

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from medops.training.checkpoint import load_checkpoint
from medops.release.inference import load_form
from medops.task_rules import MULTI_LABEL, predicted_labels

MAX_BATCH = 4096  # images per request: bounds the memory one request can take
CHECKPOINT = "checkpoint"


class BadPayload(MlflowException):
    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def image_shape(ckpt: dict) -> tuple[int, ...]:
    """One image in the npz layout: (H, W), (H, W, C), (D, H, W) or (D, H, W, C)."""
    spec = ckpt["input"]
    side = (spec["size"],) * (3 if spec["is_3d"] else 2)
    return side if spec["n_channels"] == 1 else (*side, spec["n_channels"])


def as_batch(images, shape: tuple[int, ...], max_batch: int = MAX_BATCH) -> np.ndarray:
    """Check a payload against the model's input and return a uint8 batch, or say what is wrong."""
    if isinstance(images, pd.DataFrame):
        raise BadPayload("send images as a tensor ({'inputs': [...]}), not as a table")
    x = np.asarray(images)
    if x.dtype == object:
        raise BadPayload("images are ragged: every image must have the same shape " + str(shape))
    if x.shape == shape:
        x = x[None]  # one image
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
        raise BadPayload(f"expected images of shape {shape} (a batch: (N, {', '.join(map(str, shape))})), "
                         f"got {tuple(x.shape)}")
    if len(x) == 0:
        raise BadPayload("empty batch: send at least one image")
    if len(x) > max_batch:
        raise BadPayload(f"batch of {len(x)} images is larger than the limit of {max_batch}; split it")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer):
            raise BadPayload(f"expected uint8 pixel values 0-255 as in the MedMNIST files, got dtype {x.dtype}")
        if x.min() < 0 or x.max() > 255:
            raise BadPayload(f"pixel values must be within 0-255, got {x.min()}..{x.max()}")
        x = x.astype(np.uint8)
    return x


def predictions_table(probabilities: np.ndarray, class_names: list[str], task: str) -> pd.DataFrame:
    pred = predicted_labels(probabilities, task)
    if task == MULTI_LABEL:
        hits = [np.flatnonzero(row) for row in pred]
        label = [";".join(map(str, h)) for h in hits]
        names = [";".join(class_names[i] for i in h) for h in hits]
    else:
        label, names = pred.astype(int).tolist(), [class_names[i] for i in pred]
    table = pd.DataFrame({"label": label, "class_name": names})
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = probabilities[:, i].astype(float)
    return table


def artifact_names(n: int) -> list[str]:
    """The pyfunc's checkpoint artifacts: `checkpoint`, then `checkpoint-1`... for ensemble members."""
    return [CHECKPOINT] + [f"{CHECKPOINT}-{i}" for i in range(1, n)]


class Classifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config or {}
        names = artifact_names(config.get("members", 1))
        self.load([context.artifacts[n] for n in names], config.get("max_batch", MAX_BATCH),
                  config.get("flip_tta", False))

    def load(self, checkpoints: str | Path | list, max_batch: int = MAX_BATCH, flip: bool = False) -> "Classifier":
        """One checkpoint, or the members of an ensemble (the first one's metadata describes it)."""
        checkpoints = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        self.module = load_form(checkpoints, flip)
        self.checkpoints, self.flip = checkpoints, flip
        ckpt = load_checkpoint(checkpoints[0])
        self.shape, self.task, self.max_batch = image_shape(ckpt), ckpt["task"], max_batch
        self.class_names = ckpt["class_names"]
        return self

    def probabilities(self, images) -> np.ndarray:
        x = as_batch(images, self.shape, self.max_batch)
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()

    # np.ndarray is what MLflow hands over for {"inputs": ...}; MLflow infers no schema from this
    # hint and adds no checks of its own, so as_batch's checks (shape, dtype, range) stay the ones
    # that answer, and the hint silences MLflow's "Add type hints" warning on every load.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        return predictions_table(self.probabilities(model_input), self.class_names, self.task)


def requirements() -> list[str]:
    names = ["torch", "torchvision", "numpy", "pandas", "medmnist", "mlflow", "pydantic", "pyyaml"]
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def log_classifier(checkpoints: Path | list[Path], example: np.ndarray, name: str = "model", flip: bool = False):
    """Log the pyfunc (one checkpoint or an ensemble's members) in the active run; returns MLflow's ModelInfo."""
    from mlflow.models import ModelSignature, infer_signature

    local = Classifier().load(checkpoints, flip=flip)
    output = local.predict(None, example)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")  # labels never miss
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts=dict(zip(artifact_names(len(local.checkpoints)), map(str, local.checkpoints))), code_paths=[str(Path(__file__).parents[1])],
            # No input schema: MLflow would cast JSON to it (0.5 -> 0) before predict could refuse it;
            # as_batch checks shape, dtype and range itself. The metadata documents the input.
            signature=ModelSignature(outputs=infer_signature(example, output).outputs), input_example=example,
            metadata={"input": {"dtype": "uint8", "image_shape": list(local.shape), "layout": "MedMNIST npz"},
                      "class_names": local.class_names, "task": local.task},
            model_config={"max_batch": MAX_BATCH, "members": len(local.checkpoints), "flip_tta": flip}, pip_requirements=requirements(),
        )
