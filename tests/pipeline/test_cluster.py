"""Pool mode for real: `medops cluster up` (PostgreSQL behind Optuna, an MLflow server and a
Prefect server; two workers on the `gpu` pool) runs a grid of studies in parallel."""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow import MlflowClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

from medops import cluster as medops_cluster
from medops.training import tune

from tests.conftest import REPO, alive, fast_recipe, make_processed, write_params

pytestmark = pytest.mark.slow

# two datasets, two architectures: the fan-out, the per-dataset gate and one version per study,
# in 4 study runs over 2 workers (choosing between architectures is tested in local mode)
GRID = {"pathmnist": ["baseline_cnn"], "breastmnist": ["improved_cnn"]}
N_TRIALS = 2


def run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def cluster(project, copy_repo_files, tmp_path_factory, request):
    """Workers run from their own checkout, as on another host: they share with the
    orchestrating project (the test's working directory) only the servers and the store.
    Two workers unless the test asks for another number (indirect parametrisation)."""
    workers = getattr(request, "param", 2)
    checkout = tmp_path_factory.mktemp("worker-host")
    for folder in (project, checkout):
        copy_repo_files(folder, "prefect.yaml", "flows", "tasks")
    # PostgreSQL runs as the postgres user, which cannot enter pytest's private temp folders
    folder = Path(tempfile.mkdtemp(prefix="medops-cluster-"))
    env = {**os.environ, "MEDOPS_PROJECT_DIR": str(checkout)}
    run(["medops", "cluster", "up", "--workers", str(workers), "--threads", "1", "--dir", str(folder)], checkout, env, 300)
    state = medops_cluster.load(folder)
    try:
        yield state, {**env, **state.env}, checkout
    finally:
        log_tail = {p.name: p.read_text()[-1500:] for p in folder.glob("worker-*.log")}
        down = subprocess.run(["medops", "cluster", "down", "--dir", str(folder)], capture_output=True, text=True)
        left = [name for name, pid in state.pids.items() if alive(pid)]
        shutil.rmtree(folder, ignore_errors=True)
        assert down.returncode == 0, down.stderr + str(log_tail)
        assert not left, f"still running after cluster down: {left}"  # down stops exactly what up started


def test_up_stops_at_once_naming_a_warm_engine_that_could_not_import(copy_repo_files, tmp_path):
    """A checkout whose study flow does not import: its warm engine exits while `up` waits for it.
    `up` says so by name (not at its 180 s timeout, as "not ready") and stops what it started."""
    import psutil

    checkout = tmp_path / "broken-host"
    checkout.mkdir()
    copy_repo_files(checkout, "prefect.yaml", "flows", "tasks")
    study_tasks = checkout / "tasks" / "study.py"  # imported by the study flow, not read by `prefect deploy`
    study_tasks.write_text(study_tasks.read_text().replace("from __future__ import annotations\n",
                                                           "from __future__ import annotations\n"
                                                           "raise ImportError('a half-merged change')\n", 1))
    folder = Path(tempfile.mkdtemp(prefix="medops-cluster-"))
    try:
        proc = subprocess.run(["medops", "cluster", "up", "--workers", "1", "--threads", "1", "--dir", str(folder)],
                              cwd=checkout, env={**os.environ, "MEDOPS_PROJECT_DIR": str(checkout)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert f"warm-0 exited while starting; its log: {folder / 'warm-0.log'}" in proc.stderr, proc.stderr[-2000:]
        assert "a half-merged change" in (folder / "warm-0.log").read_text()
        assert not (folder / "pg" / "postmaster.pid").exists()  # PostgreSQL stopped
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]
        assert not left, f"still running after a failed up: {left}"
    finally:
        if (folder / "cluster.json").exists():
            medops_cluster.down(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_grid_fans_out_over_two_workers_on_postgres_and_registers_once(project, cluster, monkeypatch):
    state, env, checkout = cluster
    # `up` returned only once both workers polled the pool and both warm engines had imported
    assert medops_cluster.registered_workers(state) == {"worker-0", "worker-1"}
    assert all(medops_cluster.WARM_READY in (Path(state.dir) / f"warm-{i}.log").read_text() for i in range(2))
    monkeypatch.setenv("PGPASSFILE", state.env["PGPASSFILE"])  # this process reads the studies too
    for host in (project, checkout):  # the same data and params on both, as a checkout and `dvc pull` give
        monkeypatch.chdir(host)
        for flag in GRID:
            make_processed(flag, samples=24)
        write_params(
            host / "params.yaml", {flag: {"source": "custom"} for flag in GRID},
            train=fast_recipe(epochs=2).model_dump(),
            experiments={flag: {"archs": archs} for flag, archs in GRID.items()},
            tune={"n_trials": N_TRIALS, "workers_per_study": 2, "pruner": {"type": "none"},
                  "space": {"lr": {"type": "float", "low": 0.001, "high": 0.003}}},
            quantize={"enabled": False}, report={"seeds": 1},
        )
    monkeypatch.chdir(project)
    flow = run([sys.executable, "-m", "flows.training", "--mode", "pool"], project, env)
    assert "submitted 4 study runs to the pool (2 studies)" in flow.stdout + flow.stderr
    workers = [(Path(state.dir) / f"worker-{i}.log").read_text() for i in range(2)]
    assert all("Finished in state Completed" in log for log in workers)  # both workers took study runs
    warm = "".join((Path(state.dir) / f"warm-{i}.log").read_text() for i in range(2))
    assert len(re.findall(r"run \d+: .*engine\.py for engine process", warm)) == 4  # each run started warm
    assert "starting the engine in this process" not in "".join(workers)
    deployment = json.loads(run(["prefect", "deployment", "inspect", "medops-study/study", "-o", "json"],
                                project, env).stdout)
    # the worker starts the engine itself (flows/engine.py: Prefect's, with a fast exit): one
    # process per study run, no workspace supervisor; neither it nor the pull step names the
    # deploying checkout: each worker's host fills in its own
    assert shlex.split(deployment["job_variables"]["command"]) == ["sh", "-c",
                                                                   'exec python "$MEDOPS_PROJECT_DIR/flows/engine.py"']
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                         {"directory": "{{ $MEDOPS_PROJECT_DIR }}"}}]

    mlflow.set_tracking_uri(state.mlflow_url)
    client = MlflowClient()
    try:
        for flag, archs in GRID.items():
            for arch in archs:
                study = optuna.load_study(study_name=f"{flag}-{arch}", storage=state.env["MEDOPS_OPTUNA_STORAGE"])
                trials = study.get_trials()
                numbers = [t.number for t in trials]
                assert len(numbers) == len(set(numbers))
                # the budget is met; a worker that started a trial just before it was met may add one
                assert N_TRIALS <= sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) <= N_TRIALS + 1
                runs = mlflow.search_runs(experiment_names=[f"medops/{flag}"],
                                          filter_string=f"tags.optuna_trial != '' and tags.arch = '{arch}'")
                assert sorted(int(n) for n in runs["tags.optuna_trial"]) == sorted(numbers)  # each trial logged once
            versions = client.search_model_versions(f"name='{flag}-classifier'")
            assert sorted(v.tags["arch"] for v in versions) == sorted(archs)  # one version per study
            assert client.get_model_version_by_alias(f"{flag}-classifier", "champion")
            for v in versions:  # what the workers made reached this host's reports through MLflow
                report = project / "reports" / flag / "training" / v.tags["arch"]
                assert json.loads((report / "metrics.json").read_text())["registered_version"] == v.version
                assert (report / "history.png").exists()
            assert (project / "reports" / flag / "model_card.md").read_text().startswith(f"# Model card: {flag}")
        assert not (project / "models").exists() and (checkout / "models").exists()  # trained on the workers
    finally:
        mlflow.set_tracking_uri(None)

    # Workers take runs in the order they were submitted: pathmnist's two runs, then breastmnist's.
    # pathmnist's gate ran as soon as its runs had ended, while breastmnist's still went on.
    ended, promoted = study_run_ends(state.prefect_url), promote_starts(state.prefect_url)
    assert promoted["pathmnist"] >= max(ended["pathmnist"])
    assert promoted["pathmnist"] < max(ended["breastmnist"]) <= promoted["breastmnist"]


@contextlib.contextmanager
def prefect_client(api_url: str):
    """A Prefect client of the cluster's server (this process's settings point elsewhere)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def study_run_ends(api_url: str) -> dict[str, list]:
    """When each dataset's study runs ended."""
    ended = {}
    with prefect_client(api_url) as client:
        for run in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["medops-study"]))):
            ended.setdefault(run.parameters["flag"], []).append(run.end_time)
    return ended


def promote_starts(api_url: str) -> dict[str, object]:
    """When the training flow's promote task started, per dataset."""
    with prefect_client(api_url) as client:
        (train,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["medops-train"])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[train.id])))
    return {t.name.removeprefix("promote-"): t.start_time for t in tasks if t.name.startswith("promote-")}


@pytest.fixture
def other_host_worker(cluster, copy_repo_files, tmp_path_factory):
    """One more worker on the pool, from a checkout of its own with nothing trained in it, as on
    another host: a trial it resumes can only come from the checkpoint store, and it runs in that
    checkout only if the deployment leaves each worker to find its own. Started as an operator
    would start one there (no warm engine), then held stopped (SIGSTOP) until the test resumes
    it, so that the first study run always goes to the cluster's worker; stopped with its
    process group."""
    state, env, _ = cluster
    checkout = tmp_path_factory.mktemp("other-host")
    copy_repo_files(checkout, "prefect.yaml", "flows", "tasks")
    log = Path(state.dir) / "worker-other.log"
    wenv = {**env, **medops_cluster.WORKER_SETTINGS, "MEDOPS_PROJECT_DIR": str(checkout), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "gpu", "--limit", "1", "--name",
                                   "worker-other"], cwd=checkout, env=wenv, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 120
        while "worker-other" not in medops_cluster.registered_workers(state):
            assert worker.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        os.kill(worker.pid, signal.SIGSTOP)
        yield checkout, worker.pid, log
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:  # the test killed it
            pass
        worker.wait(timeout=30)


@pytest.mark.parametrize("cluster", [1], indirect=True)
def test_a_worker_lost_mid_trial_is_marked_crashed_and_its_study_resumes_on_another_host(project, cluster,
                                                                                         other_host_worker,
                                                                                         monkeypatch):
    """A worker and its flow run SIGKILLed, as when their host dies: nothing reports the run's end,
    its heartbeats stop, flows/automations.yaml marks it Crashed, the training flow submits the
    study again and the worker of the other checkout resumes the trial from its last finished
    epoch, which it can only have from the checkpoint store, in its own checkout."""
    import psutil

    state, env, checkout = cluster
    other, other_pid, other_log = other_host_worker
    epochs = 12
    for host in (project, checkout, other):
        monkeypatch.chdir(host)
        make_processed("pathmnist", samples=256)
        write_params(host / "params.yaml", {"pathmnist": {"source": "custom"}},
                     train=fast_recipe(epochs=epochs, patience=100).model_dump(),
                     experiments={"pathmnist": {"archs": ["baseline_cnn"]}},
                     tune={"n_trials": 1, "pruner": {"type": "none"}}, quantize={"enabled": False},
                     report={"seeds": 1})
    monkeypatch.chdir(project)
    flow = subprocess.Popen([sys.executable, "-m", "flows.training", "--mode", "pool"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pushed = Path(state.env["MEDOPS_CHECKPOINT_STORE"].removeprefix("file://")) / "pathmnist-baseline_cnn"
        deadline = time.time() + 240
        while not ((pushed / "trial-0/last.pt").exists()
                   and torch.load(pushed / "trial-0/last.pt", weights_only=True)["epoch"] >= 2):
            assert flow.poll() is None and time.time() < deadline, "no epoch 2 was pushed"
            time.sleep(0.3)
        victim = psutil.Process(state.pids["worker-0"])
        assert victim.children(), "the cluster's worker is not running the study"
        os.kill(other_pid, signal.SIGCONT)
        for process in [*victim.children(recursive=True), victim]:
            process.kill()  # the worker and its flow run, at once, as a host that dies
        output, _ = flow.communicate(timeout=480)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert flow.returncode == 0, output[-4000:]
    assert "pathmnist/baseline_cnn: its study run crashed (no heartbeat for 90 s" in output, output[-4000:]
    log = other_log.read_text()
    assert re.search(r"pulled [^\n]*last\.pt[^\n]* of pathmnist-baseline_cnn/trial-0 from file://", log), log[-3000:]
    assert re.search(r"resuming \S+ from epoch ([3-9]|1[0-2])", log), log[-3000:]  # finished epochs not repeated
    trial = "models/pathmnist/baseline_cnn/trials/trial-0/last.pt"
    assert not (checkout / trial).exists() or torch.load(checkout / trial, weights_only=True)["epoch"] < epochs
    finished = torch.load(other / trial, weights_only=True)
    assert finished["epoch"] == epochs and len(finished["history"]) == epochs  # one history, each epoch once
    mlflow.set_tracking_uri(state.mlflow_url)
    try:
        versions = MlflowClient().search_model_versions("name='pathmnist-classifier'")
        assert len(versions) == 1
        assert MlflowClient().get_model_version_by_alias("pathmnist-classifier", "champion").version == versions[0].version
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture
def postgres():
    folder = Path(tempfile.mkdtemp(prefix="medops-pg-"))
    folder.chmod(0o711)
    port = medops_cluster.start_postgres(folder)
    try:
        yield folder, port
    finally:
        medops_cluster.stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _study_worker(project, storage, n_trials=2, store=None, epochs=4):
    args = ["--storage", storage] + (["--store", store] if store else [])
    return subprocess.Popen([sys.executable, "-m", "tests.study_worker", str(project), str(n_trials), str(epochs), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_workers_opening_a_new_optuna_database_at_once_all_get_it(postgres):
    """Every study run of a fan-out opens the storage at the same moment; on an empty database
    they race to create Optuna's tables, and none may fail for it."""
    folder, port = postgres
    password = (folder / "pgpass").read_text().strip().rsplit(":", 1)[1]
    storage = f"postgresql+psycopg2://medops:{password}@127.0.0.1:{port}/optuna"
    start, errors, opened = threading.Barrier(6), [], []

    def open_storage():
        start.wait()
        try:
            opened.append(tune.storage_for(storage))
        except Exception as exc:  # noqa: BLE001 - collected and shown by the assertion
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=open_storage) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    assert len(opened) == 6
    optuna.create_study(study_name="shared", storage=opened[0])
    assert [s.study_name for s in optuna.get_all_study_summaries(opened[-1])] == ["shared"]


def test_postgres_lost_mid_study_names_the_database_and_the_next_run_completes(project, postgres):
    folder, port = postgres
    password = (folder / "pgpass").read_text().strip().rsplit(":", 1)[1]
    storage = f"postgresql+psycopg2://medops:{password}@127.0.0.1:{port}/optuna"
    make_processed("pathmnist", samples=96)
    # 12 epochs a trial: the rest of the study outlasts the poll and the stop by seconds, so
    # the cut lands mid-study on a fast host too (4 epochs once finished both trials first).
    worker = _study_worker(project, storage, epochs=12)
    deadline = time.time() + 180
    while True:  # until a trial has reported an epoch: the study is mid-trial
        try:
            trials = optuna.load_study(study_name="pathmnist-baseline_cnn", storage=storage).get_trials()
        except KeyError:  # the study does not exist yet
            trials = []
        if any(t.intermediate_values for t in trials):
            break
        assert worker.poll() is None and time.time() < deadline, worker.stdout.read() if worker.poll() else "timeout"
        time.sleep(0.5)
    medops_cluster.stop_postgres(folder, mode="immediate")  # as a crash would
    out, _ = worker.communicate(timeout=180)
    assert worker.returncode == 1, out
    error = next((line for line in out.splitlines() if line.startswith("error: ")), out[-5000:])
    assert f"medops:***@127.0.0.1:{port}/optuna" in error, error  # names the database
    assert password not in out

    medops_cluster.restart_postgres(folder, port)
    time.sleep(tune.GRACE_SECONDS + tune.HEARTBEAT_SECONDS)  # the cut trial's heartbeat is stale
    rerun = _study_worker(project, storage, epochs=12)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    trials = optuna.load_study(study_name="pathmnist-baseline_cnn", storage=storage).get_trials()
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2  # the budget, nothing counted twice


def test_a_trial_killed_on_one_host_resumes_on_another_from_the_checkpoint_store(tmp_path, postgres, monkeypatch):
    """Two checkouts stand for two hosts: they share only the Optuna database and the store."""
    folder, port = postgres
    password = (folder / "pgpass").read_text().strip().rsplit(":", 1)[1]
    storage = f"postgresql+psycopg2://medops:{password}@127.0.0.1:{port}/optuna"
    store = tmp_path / "store"
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        host.mkdir()
        monkeypatch.chdir(host)
        make_processed("pathmnist", samples=96)  # the same data on both, as `dvc pull` gives
    # 10 epochs (the recipe's patience, so none stops early): the kill after epoch 2 lands
    # mid-trial even when the poll runs late on a busy host
    first = _study_worker(hosts[0], storage, n_trials=1, store=store.as_uri(), epochs=10)
    pushed = store / "pathmnist-baseline_cnn" / "trial-0" / "last.pt"
    deadline = time.time() + 180
    while not (pushed.exists() and torch.load(pushed, weights_only=True)["epoch"] >= 2):
        assert first.poll() is None and time.time() < deadline, "the first host never pushed epoch 2"
        time.sleep(0.3)
    os.kill(first.pid, signal.SIGKILL)  # the host is gone, its disk with it
    first.wait()
    time.sleep(tune.GRACE_SECONDS + tune.HEARTBEAT_SECONDS)

    second = _study_worker(hosts[1], storage, n_trials=1, store=store.as_uri(), epochs=10)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    resumed = re.search(r"resuming \S+ from epoch (\d+)", out)
    assert resumed and 3 <= int(resumed[1]) <= 10, out  # finished epochs are not repeated
    trials = optuna.load_study(study_name="pathmnist-baseline_cnn", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0
    finished = torch.load(hosts[1] / "models/pathmnist/baseline_cnn/trials/trial-0/last.pt", weights_only=True)
    assert finished["epoch"] == 10 and len(finished["history"]) == 10  # one history, epochs 1-10 once each
