"""A training flow killed with SIGKILL does not stay "Running" in Prefect: the next flow run on
the host marks it Crashed (flows/liveness.py), and the rerun itself completes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import fast_recipe, make_processed, write_params


@pytest.mark.slow
def test_a_killed_training_flow_is_marked_crashed_by_the_next_run(project, prefect_api):
    make_processed("pathmnist", samples={"train": 600, "val": 60, "test": 60})
    write_params(project / "params.yaml", {"pathmnist": {"source": "custom"}},
                 train=fast_recipe(epochs=12).model_dump(), experiments={"pathmnist": {}},
                 tune={"n_trials": 1, "pruner": {"type": "none"}, "space": {}},
                 mlflow={"tracking_uri": f"sqlite:///{project / 'mlruns/mlflow.db'}"},
                 quantize={"enabled": False}, report={"seeds": 1}, explain={"per_class": 1})
    first = subprocess.Popen([sys.executable, "-m", "flows.training"], cwd=project, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = project / "models/pathmnist/baseline_cnn/trials/trial-0/last.pt"
    deadline = time.time() + 240
    while not last.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists() and first.poll() is None, "the flow did not start training in time"
    os.killpg(first.pid, signal.SIGKILL)  # the flow process and its children, as an OOM kill would
    first.wait(30)

    rerun = subprocess.Popen([sys.executable, "-m", "flows.training"], cwd=project, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output[-2000:]

    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:  # as the flows
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["medops-train"])))
    by_pid = {run.infrastructure_pid.rsplit(":", 1)[1]: run for run in runs if run.infrastructure_pid}
    killed, second = by_pid[str(first.pid)], by_pid[str(rerun.pid)]
    assert killed.state.type == StateType.CRASHED and "ended without reporting" in killed.state.message
    assert second.state.type == StateType.COMPLETED
    assert "marked Crashed" in output  # the rerun says what it did
