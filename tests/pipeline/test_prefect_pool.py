"""Pool mode against a real Prefect server: deployments from prefect.yaml, a process worker
on the `gpu` pool picking up the studies the training flow fans out."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from medops import paths

from medops.lifecycle import tracking
from medops.config import MlflowParams

from tests.conftest import fast_recipe, free_port, make_processed, wait_for_http, write_params

pytestmark = pytest.mark.slow


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
    wait_for_http(f"http://127.0.0.1:{port}/api/health", server, f"Prefect server (log: {tmp_path / 'server.log'})")
    yield env
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _stop(worker: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: a worker's graceful shutdown has been seen to outlast 30 s on a
    loaded machine, and how a worker shuts down is not what these tests check."""
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=30)


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
        _stop(worker)
        worker_log.close()
    assert flow.returncode == 0, f"{flow.stderr[-3000:]}\nworker:\n{(project / 'worker.log').read_text()[-3000:]}"
    # the study ran in the worker's flow run, not in the training flow's process
    assert "study-pathmnist-baseline_cnn" in (project / "worker.log").read_text()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    champion = MlflowClient().get_model_version_by_alias("pathmnist-classifier", "champion")
    assert champion.tags["arch"] == "baseline_cnn"
    mlflow.set_tracking_uri(None)


def _wait_for_completed_runs(logs: list, count: int, timeout: float = 600) -> str:
    """Worker logs stream their flow runs' logs: wait until `count` runs finished Completed."""
    deadline = time.time() + timeout
    while True:
        text = "".join(Path(log).read_text() for log in logs)
        if "Finished in state Failed" in text or "Finished in state Crashed" in text:
            pytest.fail(f"a study flow run failed:\n{text[-4000:]}")
        if text.count("Finished in state Completed()") >= count:
            return text
        assert time.time() < deadline, f"study runs did not finish:\n{text[-4000:]}"
        time.sleep(2)


def test_two_gpu_pool_workers_share_one_study(project, prefect_server, copy_repo_files):
    copy_repo_files(project, "prefect.yaml", "flows", "tasks")
    make_processed("pathmnist", samples=24)
    db = f"sqlite:///{project / 'mlruns/mlflow.db'}"
    write_params(
        project / "params.yaml", {"pathmnist": {"source": "custom"}},
        train=fast_recipe(epochs=3).model_dump(), experiments={"pathmnist": {"archs": ["baseline_cnn"]}},
        tune={"n_trials": 4, "pruner": {"type": "none"},
              "space": {"lr": {"type": "float", "low": 0.001, "high": 0.003}}},
        mlflow={"tracking_uri": db}, quantize={"seconds": 0.05, "calibration_size": 16, "qat_epochs": 0},
        report={"seeds": 1},
    )
    # both stores exist before two processes open them (as after a first run or a deployment)
    tracking.configure(MlflowParams(tracking_uri=db))  # creates mlruns/
    tracking.use_experiment(MlflowParams(), "pathmnist")
    optuna.create_study(study_name="pathmnist-baseline_cnn", storage=paths.optuna_storage(), direction="maximize")
    mlflow.set_tracking_uri(None)

    env = {**prefect_server, "MEDOPS_PROJECT_DIR": str(project)}
    run(["prefect", "work-pool", "create", "gpu", "--type", "process"], project, env)
    run(["prefect", "--no-prompt", "deploy", "--name", "study"], project, env)
    logs = [project / f"worker-{i}.log" for i in range(2)]
    workers = [subprocess.Popen(["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"], cwd=project, env=env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    try:
        for _ in range(2):  # the same study twice: one run per worker (--limit 1)
            run(["prefect", "deployment", "run", "medops-study/study", "--param", "flag=pathmnist",
                 "--param", "arch=baseline_cnn"], project, env)
        _wait_for_completed_runs(logs, 2)
    finally:
        for w in workers:
            _stop(w)
    assert all("study-pathmnist-baseline_cnn" in log.read_text() for log in logs)  # each worker ran one

    trials = optuna.load_study(study_name="pathmnist-baseline_cnn", storage=paths.optuna_storage()).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no trial number twice
    assert 4 <= sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) <= 5  # budget met
    mlflow.set_tracking_uri(db)
    runs = mlflow.search_runs(experiment_names=["medops/pathmnist"], filter_string="tags.optuna_trial != ''")
    assert sorted(int(n) for n in runs["tags.optuna_trial"]) == sorted(numbers)  # every trial logged once
    mlflow.set_tracking_uri(None)
