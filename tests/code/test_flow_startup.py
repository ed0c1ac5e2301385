"""Every flow and study run is a fresh process: what it imports before its first step is paid
per run (pool mode pays it per study run, and the orchestrating flow once per grid)."""

import json
import subprocess
import sys

from tests.conftest import REPO


def imported(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of candidates a fresh interpreter has imported after importing module."""
    probe = f"import json, sys, {module}; print(json.dumps(sorted(m for m in {candidates!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_study_run_imports_no_grad_cam_stack_until_it_explains():
    assert imported("flows.study", ("pytorch_grad_cam", "torchvision", "cv2")) == []


def test_a_study_run_has_its_training_stack_imported_up_front():
    # what the warm engine (flows/warm_engine.py) imports ahead of the runs it forks
    assert imported("flows.study", ("torch", "optuna", "mlflow")) == ["mlflow", "optuna", "torch"]


def test_the_training_flow_imports_no_torch_until_it_runs_a_study_itself():
    # in pool mode it only submits, waits and runs the per-dataset stages
    assert imported("flows.training", ("torch", "optuna", "sklearn", "onnxruntime")) == []
