"""What a person sees in the MLflow UI, rendered by a real browser (headless Chromium): the study
run's system metrics and the registered model's description."""

import html
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from medops import pipeline
from medops.config import load_params
from medops.cluster import free_port
from tests.conftest import fast_recipe, make_processed, wait_for_http, write_params

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")]
FLAG, ARCH = "pathmnist", "baseline_cnn"


def rendered_text(url: str, profile) -> str:
    """The page's text once its scripts have run (the UI is a single-page app)."""
    # no background networking: this machine's closed network refuses it, many times a start
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=15000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", proc.stdout)))


def test_the_mlflow_ui_shows_system_metrics_of_a_study_and_the_registered_models_description(project, monkeypatch,
                                                                                              tmp_path_factory):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # this study lasts seconds, not minutes
    make_processed(FLAG, samples={"train": 240, "val": 40, "test": 40})
    store = project / "mlruns"
    write_params(project / "params.yaml", {FLAG: {"source": "custom"}}, train=fast_recipe(epochs=4).model_dump(),
                 experiments={FLAG: {"archs": [ARCH]}},
                 tune={"n_trials": 1, "pruner": {"type": "none"}, "space": {}},
                 mlflow={"tracking_uri": f"sqlite:///{store / 'mlflow.db'}"},
                 quantize={"enabled": False}, report={"seeds": 1}, explain={"per_class": 1})
    params = load_params(project / "params.yaml")
    # the stages as the flow runs them, without Prefect
    tuned = pipeline.tune(FLAG, ARCH, params)
    seeded = pipeline.seeds(FLAG, ARCH, params, tuned)
    evaluated = pipeline.evaluate(FLAG, ARCH, params, tuned, seeded)
    explained, quantized = pipeline.explain(FLAG, ARCH, params, tuned), pipeline.quantize(FLAG, ARCH, params, evaluated)
    summary = pipeline.register(FLAG, ARCH, params, tuned, seeded, evaluated, explained, quantized)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server",
                               "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ui = f"http://127.0.0.1:{port}"
        wait_for_http(f"{ui}/health", server, "mlflow server")
        profile = tmp_path_factory.mktemp("chromium-profile")
        run = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_run(tuned["run_id"])
        page = rendered_text(f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/system-metrics",
                             profile)
        shown = re.search(r"System metrics \((\d+)\)", page)
        assert shown and int(shown.group(1)) >= 3, page[-1500:]  # CPU, memory, disk, network: one chart each
        page = rendered_text(f"{ui}/#/models/{FLAG}-classifier", profile)
        assert f"MedMNIST {FLAG} classifier (MLflow pyfunc): multi-class task, 9 classes" in page, page[-1500:]
        assert f"Version {summary['registered_version']}" in page
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(30)
