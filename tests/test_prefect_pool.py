"""Pool mode against a real Prefect server: deployments from prefect.yaml, a process worker
on the `gpu` pool picking up the studies the training flow fans out."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import fast_recipe, make_processed, write_params

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail(f"Prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield env
    server.terminate()
    server.wait(timeout=30)
    log.close()


def run(cmd, cwd, env, timeout=180):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_pool_mode_runs_studies_on_a_gpu_pool_worker(project, prefect_server, copy_repo_files):
    copy_repo_files(project, "prefect.yaml", "flows", "tasks")
    make_processed("pathmnist", samples=24)
    write_params(
        project / "params.yaml", {"pathmnist": {"source": "custom"}},
        train=fast_recipe(epochs=1).model_dump(),
        experiments={"pathmnist": {"archs": ["baseline_cnn"]}},
        tune={"n_trials": 1, "space": {"lr": {"type": "float", "low": 0.001, "high": 0.003}}},
        mlflow={"tracking_uri": f"sqlite:///{project / 'mlruns/mlflow.db'}"},
        orchestration={"mode": "pool"},
    )
    env = {**prefect_server, "MEDOPS_PROJECT_DIR": str(project)}
    for pool in ("gpu", "medops-cpu"):
        run(["prefect", "work-pool", "create", pool, "--type", "process"], project, env)
    deployed = run(["prefect", "--no-prompt", "deploy", "--all"], project, env)
    assert "medops-study/study" in deployed.stdout + deployed.stderr

    worker_log = open(project / "worker.log", "w")
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "gpu"], cwd=project, env=env,
                              stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        flow = subprocess.run([sys.executable, "-m", "flows.training"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=400)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        worker_log.close()
    assert flow.returncode == 0, f"{flow.stderr[-3000:]}\nworker:\n{(project / 'worker.log').read_text()[-3000:]}"
    # the study ran in the worker's flow run, not in the training flow's process
    assert "study-pathmnist-baseline_cnn" in (project / "worker.log").read_text()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    champion = MlflowClient().get_model_version_by_alias("pathmnist-classifier", "champion")
    assert champion.tags["arch"] == "baseline_cnn"
    mlflow.set_tracking_uri(None)
