"""Shared fixtures. Tests run real components: DVC, Great Expectations, torch, files on disk."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Console scripts (medops, dvc) of this interpreter's environment, and no outbound calls.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
for key, value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(key, value)

# Under pytest-xdist each worker gets its share of the cores for torch (and the flows and
# servers it starts), set before torch is imported: two workers with two OpenMP threads each
# would spin against each other on two cores.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, str(max(1, (os.cpu_count() or 1) // workers)))

# Every home a test could reach is a temporary folder of this session, set before Prefect, MLflow
# or DVC is imported (subprocesses inherit it): the user's Prefect history and profile (which may
# name their own server), MLflow and Prefect servers named in their shell, and DVC's site cache
# stay untouched. MLflow stores and Optuna studies live in each test's project folder.
TEST_HOMES = Path(tempfile.mkdtemp(prefix="medops-test-homes-"))
atexit.register(shutil.rmtree, TEST_HOMES, ignore_errors=True)  # also in helper processes that import this
os.environ["PREFECT_HOME"] = str(TEST_HOMES / "prefect")
os.environ["DVC_SITE_CACHE_DIR"] = str(TEST_HOMES / "dvc-site-cache")
os.environ["DVC_GLOBAL_CONFIG_DIR"] = str(TEST_HOMES / "dvc-global-config")
for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_PROFILES_PATH",
            "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MEDOPS_OPTUNA_STORAGE", "MEDOPS_CHECKPOINT_STORE",
            "PGPASSFILE"):
    os.environ.pop(key, None)


def _official_mirror() -> Path | None:
    candidates = [os.environ.get("MEDOPS_MIRROR"), REPO.parent / "shared" / "medmnist"]
    for c in candidates:
        if c and (Path(c) / "breastmnist.npz").exists():
            return Path(c).resolve()
    return None


@pytest.fixture(scope="session")
def official_mirror() -> Path:
    mirror = _official_mirror()
    if mirror is None:
        pytest.skip("official MedMNIST files not found: set MEDOPS_MIRROR to a folder holding them")
    return mirror


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory (stages write relative to it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDOPS_MIRROR", raising=False)
    return tmp_path


def write_params(path: Path, datasets: dict, mirror: Path | None = None, **sections) -> Path:
    """The repository's params.yaml with other datasets (and any sections) swapped in."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"mirror": str(mirror) if mirror else None, "datasets": datasets}
    params["experiments"] = {}  # the repository's experiments name its own datasets
    params.update(sections)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under the folders with its bytes, to prove a failure changed nothing."""
    files = {}
    for folder in folders:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                files[str(f)] = f.read_bytes()
    return files


@pytest.fixture
def copy_repo_files():
    def copy(dest: Path, *names: str) -> None:
        for name in names:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dest / name)

    return copy


def make_processed(flag: str, size: int = 28, samples: int | dict = 32, seed: int = 0, synth: dict | None = None,
                   **ds) -> Path:
    """Synthetic data for `flag` through the real preprocess stage; returns the processed folder.
    `synth` goes to make_arrays (priors, ambiguity)."""
    from medops.config import DatasetParams
    from medops.data.info import resolve
    from medops.data.preprocess import preprocess
    from medops.data.synth import make_arrays
    from medops import paths

    save_npz(paths.raw_file(flag), make_arrays(resolve(flag, size), samples, seed=seed, **(synth or {})))
    return preprocess(flag, DatasetParams(size=size, source="custom", **ds))


def alive(pid: int) -> bool:
    """Whether process pid is running (a zombie has ended, only not yet been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:  # it ended between the two looks
        return False


def fast_recipe(**overrides):
    """A small, quick training recipe for tests (CPU, few epochs, no augmentation)."""
    from medops.config import TrainParams

    base = {"arch": "baseline_cnn", "epochs": 3, "batch_size": 16, "lr": 3e-3, "device": "cpu",
            "augment": {"enabled": False}, "patience": 10, "width": 1.0,
            "amp": False}  # fp32 on every host: tests compare runs; training/precision.py has its own
    base.update(overrides)
    return TrainParams.model_validate(base)


def wait_for_http(url: str, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    """Until `url` answers; fails the test if `process` exits first or time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"{what} did not start (exit code {process.poll()})")
            time.sleep(0.5)


@pytest.fixture(autouse=True)
def _forget_tracking_uri():
    """mlflow.set_tracking_uri (pipeline stages called in-process use it) also sets
    MLFLOW_TRACKING_URI, which every later subprocess would inherit: one test's store would
    become the next test's."""
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _medops_logs_reach_caplog():
    """The CLI, called in-process by some tests, gives the `medops` logger a console handler of
    its own and stops its records from propagating; a later test's caplog would see none."""
    logging.getLogger("medops").propagate = True


@pytest.fixture(scope="session")
def prefect_server_url():
    """One Prefect server on loopback for the tests whose flows run as subprocesses, as a team
    running scheduled flows has: without it each flow process boots a temporary server of its own
    (about 20 s here). The temporary server keeps its own test (the flow test in test_orchestration)."""
    from medops.cluster import free_port

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(TEST_HOMES / "prefect-server")}  # not the temporary servers' database
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    wait_for_http(f"{url}/health", server, "prefect server")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture
def prefect_api(prefect_server_url, monkeypatch):
    """Flows this test starts report to the session's Prefect server."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server_url)
    return prefect_server_url


@pytest.fixture(scope="session", autouse=True)
def _remove_test_homes():
    yield
    shutil.rmtree(TEST_HOMES, ignore_errors=True)
