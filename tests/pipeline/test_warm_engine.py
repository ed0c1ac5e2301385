"""The pool's warm engine for real (flows/warm_engine.py behind the engine command
flows/engine.py): Prefect's engine runs in a standby that imported the study's libraries
beforehand, with the engine process's arguments, environment, output and exit status; a standby
never outlives the engine process the worker watches; code changed on disk never runs warm.
The cluster tests (test_cluster.py) run whole study runs through it."""

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def keeper(tmp_path_factory):
    checkout = tmp_path_factory.mktemp("checkout")  # its own copy: one test changes a file of it
    for name in ("flows", "tasks"):
        shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    sock = Path(tempfile.mkdtemp(prefix="medops-warm-")) / "warm.sock"
    log = checkout / "warm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(checkout / "flows" / "warm_engine.py"), "--socket", str(sock)],
                                cwd=checkout, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 30
    while not sock.exists():
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.1)
    assert sock.stat().st_mode & 0o777 == 0o600  # only this user may hand it a run
    yield checkout, sock, log
    os.killpg(proc.pid, signal.SIGTERM)  # as `medops cluster down` stops it, with its standbys
    proc.wait(timeout=30)
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(checkout) in " ".join(p.info["cmdline"] or [])
            and not _gone(p.pid)]
    assert not left and not sock.exists()


def engine(keeper, *args, env=None):
    checkout, sock, _ = keeper
    return subprocess.Popen([sys.executable, str(checkout / "flows" / "engine.py"), *args],
                            env={**os.environ, "MEDOPS_WARM_ENGINE": str(sock), **(env or {})},
                            cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def standby_of(keeper, pid: int, timeout: float = 120) -> int:
    """The pid of the standby that took engine process pid's run (from the keeper's log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(rf"standby (\d+): running .* for engine process {pid}\n", keeper[2].read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no standby took engine process {pid}'s run:\n{keeper[2].read_text()[-2000:]}")


def waiting_standby(keeper, timeout: float = 120) -> int:
    """A standby that has imported everything and waits for a run."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = keeper[2].read_text()
        busy = set(re.findall(r"standby (\d+): running", text))
        idle = [int(p) for p in re.findall(r"standby (\d+): ready", text) if p not in busy and not _gone(int(p))]
        if idle:
            return idle[-1]
        time.sleep(0.1)
    raise AssertionError(f"no standby is waiting:\n{keeper[2].read_text()[-2000:]}")


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server hook
        self.paths.append(self.path)
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_run_takes_the_engine_process_arguments_environment_output_and_status(keeper):
    api = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    run_id = str(uuid.uuid4())
    try:
        # the keeper's environment has neither: Prefect's settings must follow the run's
        proc = engine(keeper, env={"PREFECT_API_URL": f"http://127.0.0.1:{api.server_port}/api",
                                   "PREFECT__FLOW_RUN_ID": run_id})
        out, err = proc.communicate(timeout=180)
    finally:
        api.shutdown()
    standby = standby_of(keeper, proc.pid)
    assert standby != proc.pid
    assert any(run_id in path for path in _Recorder.paths), (_Recorder.paths, err[-2000:])
    assert proc.returncode == 1 and "404" in err, err[-2000:]  # the flow run is unknown: its error, its status

    proc = engine(keeper, "not-a-uuid")
    out, err = proc.communicate(timeout=180)
    assert standby_of(keeper, proc.pid) != standby  # one standby per run
    assert proc.returncode == 1 and "Received arguments: " in err and "'not-a-uuid'" in err, err[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_standby_never_outlives_its_engine_process(keeper, sig):
    """SIGKILL is the worker's host dying (the run must not go on unseen); SIGTERM is the
    worker cancelling the run, passed on to the standby."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections and never answers: the run waits on the API
    try:
        proc = engine(keeper, env={"PREFECT_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api",
                                   "PREFECT__FLOW_RUN_ID": str(uuid.uuid4())})
        standby = standby_of(keeper, proc.pid)
        time.sleep(1)
        assert not _gone(standby) and proc.poll() is None  # the run is waiting on the API
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        deadline = time.time() + 10
        while not _gone(standby):
            assert time.time() < deadline, f"standby {standby} still running after its engine process got {sig!r}"
            time.sleep(0.1)
        assert proc.returncode != 0
    finally:
        silent.close()


def test_code_changed_since_the_standby_imported_it_runs_cold(keeper):
    checkout = keeper[0]
    changed = checkout / "flows" / "artifacts.py"
    waiting = waiting_standby(keeper)  # it has imported the file
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    cold = engine(keeper, "not-a-uuid")
    _, err = cold.communicate(timeout=180)
    assert f"declined: {changed} changed since this process imported it" in err, err[-2000:]
    assert cold.returncode == 1 and "'not-a-uuid'" in err  # the engine still ran, in its own process
    assert f"for engine process {cold.pid}\n" not in keeper[2].read_text()
    deadline = time.time() + 10
    while not _gone(waiting):  # the standby that declined made way for one with the new code
        assert time.time() < deadline
        time.sleep(0.1)
    warm = engine(keeper, "not-a-uuid")  # the next standby imported the changed file
    warm.communicate(timeout=180)
    standby_of(keeper, warm.pid)

    threads = engine(keeper, "not-a-uuid", env={"OMP_NUM_THREADS": "7"})  # torch read it at import
    _, err = threads.communicate(timeout=180)
    assert "declined: OMP_NUM_THREADS='7' in the run's environment" in err and threads.returncode == 1, err[-2000:]


def test_a_waiting_standby_ends_with_its_keeper(tmp_path):
    """`kill -9` of the keeper alone: its standby has no run and nobody to stop it, so it ends."""
    sock, log = tmp_path / "warm.sock", tmp_path / "warm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "warm_engine.py"), "--socket", str(sock)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        waiting = waiting_standby((REPO, sock, log))
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while not _gone(waiting):
        assert time.time() < deadline, f"standby {waiting} outlived its keeper"
        time.sleep(0.1)
