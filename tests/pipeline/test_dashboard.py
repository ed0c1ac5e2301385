"""The Optuna dashboard, as the README starts it, over a project's study storage."""

import json
import subprocess
import urllib.request

import optuna

from medops.cluster import free_port
from tests.conftest import wait_for_http


def test_optuna_dashboard_lists_the_projects_studies(project):
    storage = f"sqlite:///{project / 'mlruns' / 'optuna.db'}"
    (project / "mlruns").mkdir()
    study = optuna.create_study(study_name="breastmnist-improved_cnn", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=3)
    port = free_port()
    server = subprocess.Popen(["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        wait_for_http(url, server, "optuna-dashboard", timeout=60)
        with urllib.request.urlopen(url, timeout=10) as reply:
            studies = json.load(reply)["study_summaries"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [s["study_name"] for s in studies] == ["breastmnist-improved_cnn"]
