"""The pool's warm engine for real (flows/warm_engine.py behind the engine command
flows/engine.py): Prefect's engine runs in a child forked from a process that imported the
study's libraries beforehand, with the engine process's arguments, environment, output and exit
status; a run never outlives the engine process the worker watches; code changed on disk never
runs warm. The cluster tests (test_cluster.py) run whole study runs through it."""

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

from tests.conftest import REPO, alive

pytestmark = pytest.mark.slow


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
    os.killpg(proc.pid, signal.SIGTERM)  # as `medops cluster down` stops it, with its runs
    proc.wait(timeout=30)
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(checkout) in " ".join(p.info["cmdline"] or [])
            and alive(p.pid)]
    assert not left and not sock.exists()


def engine(keeper, *args, env=None, python=sys.executable):
    checkout, sock, _ = keeper
    return subprocess.Popen([str(python), str(checkout / "flows" / "engine.py"), *args],
                            env={**os.environ, "MEDOPS_WARM_ENGINE": str(sock), **(env or {})},
                            cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_of(keeper, pid: int, timeout: float = 120) -> int:
    """The pid of the child that ran engine process pid's run (from the warm engine's log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(rf"run (\d+): .* for engine process {pid}\n", keeper[2].read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no warm run for engine process {pid}:\n{keeper[2].read_text()[-2000:]}")


def ready(keeper, times: int = 1, timeout: float = 120) -> None:
    """Wait until the warm engine has finished importing `times` times."""
    deadline = time.time() + timeout
    while keeper[2].read_text().count(": ready after ") < times:
        assert time.time() < deadline, keeper[2].read_text()[-2000:]
        time.sleep(0.1)


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
    child = run_of(keeper, proc.pid)
    assert child != proc.pid
    assert any(run_id in path for path in _Recorder.paths), (_Recorder.paths, err[-2000:])
    assert proc.returncode == 1 and "404" in err, err[-2000:]  # the flow run is unknown: its error, its status

    proc = engine(keeper, "not-a-uuid")
    out, err = proc.communicate(timeout=180)
    assert run_of(keeper, proc.pid) not in (child, proc.pid)  # a child per run
    assert proc.returncode == 1 and "Received arguments: " in err and "'not-a-uuid'" in err, err[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_never_outlives_its_engine_process(keeper, sig):
    """SIGKILL is the worker's host dying (the run must not go on unseen); SIGTERM is the
    worker cancelling the run, passed on to the run."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections and never answers: the run waits on the API
    try:
        proc = engine(keeper, env={"PREFECT_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api",
                                   "PREFECT__FLOW_RUN_ID": str(uuid.uuid4())})
        child = run_of(keeper, proc.pid)
        time.sleep(1)
        assert alive(child) and proc.poll() is None  # the run is waiting on the API
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        deadline = time.time() + 10
        while alive(child):
            assert time.time() < deadline, f"run {child} still going after its engine process got {sig!r}"
            time.sleep(0.1)
        assert proc.returncode != 0
    finally:
        silent.close()


def test_code_changed_since_the_import_runs_cold_and_the_warm_engine_imports_it_afresh(keeper):
    checkout = keeper[0]
    changed = checkout / "tasks" / "study.py"
    ready(keeper)
    imports = keeper[2].read_text().count(": ready after ")
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    cold = engine(keeper, "not-a-uuid")
    _, err = cold.communicate(timeout=180)
    assert f"declined: {changed} changed since this process imported it" in err, err[-2000:]
    assert cold.returncode == 1 and "'not-a-uuid'" in err  # the engine still ran, in its own process
    assert f"for engine process {cold.pid}\n" not in keeper[2].read_text()
    ready(keeper, imports + 1)  # the same process, imported again
    warm = engine(keeper, "not-a-uuid")
    warm.communicate(timeout=180)
    run_of(keeper, warm.pid)

    threads = engine(keeper, "not-a-uuid", env={"OMP_NUM_THREADS": "7"})  # torch read it at import
    _, err = threads.communicate(timeout=180)
    assert "declined: OMP_NUM_THREADS='7' in the run's environment" in err and threads.returncode == 1, err[-2000:]


def test_a_run_warm_only_in_the_same_interpreter_and_environment(keeper):
    """`python3.11` beside `python` in the environment's bin (what a worker's PATH may find) is the
    same interpreter in the same environment: warm. The interpreter the environment was made
    from is another environment, without the project's packages: cold, saying so."""
    ready(keeper)
    alias = Path(sys.executable).parent / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert alias.exists() and alias.name != Path(sys.executable).name
    warm = engine(keeper, "not-a-uuid", python=alias)
    warm.communicate(timeout=180)
    run_of(keeper, warm.pid)

    base = Path(sys._base_executable)  # the interpreter outside this virtualenv
    if sys.prefix == sys.base_prefix or not base.exists():
        pytest.skip("the tests run outside a virtualenv: there is no other environment to ask for")
    other = engine(keeper, "not-a-uuid", python=base)
    _, err = other.communicate(timeout=180)
    assert f"declined: the run asks for {base} (environment {sys.base_prefix})" in err, err[-2000:]
    assert other.returncode != 0 and f"for engine process {other.pid}\n" not in keeper[2].read_text()
