"""Faults a scheduled pipeline must survive, with real processes and real signals."""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from medops.cluster import free_port
from tests.conftest import fast_recipe, make_processed, snapshot, wait_for_http, write_params


def _start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", server, "mlflow server")
    return server


def _kill(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, as a crash would
    server.wait(30)


@pytest.mark.slow
def test_tracking_server_lost_mid_run_registers_nothing_and_the_next_run_completes(project, prefect_api):
    make_processed("pathmnist", samples=48)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    write_params(project / "params.yaml", {"pathmnist": {"source": "custom"}},
                 train=fast_recipe(epochs=8, patience=100).model_dump(), experiments={"pathmnist": {"archs": ["baseline_cnn"]}},
                 tune={"n_trials": 2, "pruner": {"type": "none"}}, mlflow={"tracking_uri": uri},
                 quantize={"enabled": False},  # int8 has tests of its own; the fault is in tracking
                 report={"seeds": 1})
    # one quick retry: a refused connection fails at once, the retries' back-off is all the wait
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    server = _start_mlflow_server(project, port)
    flow = subprocess.Popen([sys.executable, "-m", "flows.training"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        mlflow.set_tracking_uri(uri)
        deadline = time.time() + 120
        while not mlflow.search_runs(search_all_experiments=True, filter_string="tags.kind = 'study'").shape[0]:
            assert flow.poll() is None and time.time() < deadline, flow.communicate()[0][-3000:]
            time.sleep(0.5)
        _kill(server)  # mid-study: trials are training and logging epochs
        output, _ = flow.communicate(timeout=300)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert flow.returncode == 1, output
    print(output[-1500:])  # shown with -rP: what a person sees
    assert f"pathmnist/baseline_cnn: MLflow tracking at {uri} stopped answering" in output  # which study, which server
    assert "no version was registered" in output

    server = _start_mlflow_server(project, port)
    try:
        assert not MlflowClient().search_model_versions("name='pathmnist-classifier'")  # nothing half-registered
        rerun = subprocess.run([sys.executable, "-m", "flows.training"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        versions = MlflowClient().search_model_versions("name='pathmnist-classifier'")
        assert len(versions) == 1
        assert MlflowClient().get_model_version_by_alias("pathmnist-classifier", "champion").version == versions[0].version
    finally:
        mlflow.set_tracking_uri(None)
        _kill(server)


def test_disk_full_while_writing_keeps_the_last_good_output(project):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), as a full disk would."""
    make_processed("pneumoniamnist", samples=64)
    good = snapshot(project / "data/processed")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    write_params(project / "params.yaml", {"pneumoniamnist": {"source": "custom"}})
    proc = subprocess.run([sys.executable, "-m", "medops.cli", "data", "preprocess", "pneumoniamnist"], cwd=project,
                          capture_output=True, text=True, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert "data/processed/pneumoniamnist: could not be written" in proc.stderr
    assert snapshot(project / "data/processed") == good  # nothing partial, nothing lost
    assert not list((project / "data/processed").rglob("*.tmp*"))
