"""Warm engine for a pool worker: a study run starts in a process that has already imported
torch, MLflow, Optuna, Prefect and the flow's code, instead of paying those 5-7 s of imports
(and their CPU) after the worker picked it up.

    python flows/warm_engine.py --socket <dir>/warm-0.sock       # started by `medops cluster up`

This process imports `flows.study` once, then listens on a Unix socket (mode 600).
flows/engine.py, the command the worker starts for a study run, connects and hands over its
arguments, environment, working directory and stdio. The warm engine forks a child for the run;
the child takes them as its own, runs Prefect's engine, sends back the exit status and ends. A
fork takes milliseconds, so the imports are paid once per worker rather than once per run. The
parent only imports: it never runs a torch op, initialises CUDA, opens a connection or starts a
Prefect client. Its heap is frozen (gc.freeze) so that the children keep sharing its pages. The
threads its libraries start at import (OpenBLAS's and jemalloc's idle pools) are made for fork,
as in Celery's prefork pool and PyTorch's DataLoader workers, which fork from the same libraries.

A run starts cold, in the engine process as it does without a warm engine, when the project's
code changed on disk after it was imported (the warm engine then restarts itself to import it
afresh), when a variable read at import differs, or when the run asks for another interpreter.
If the engine process ends (the worker was killed), its child kills itself too: a run never
outlives the process the worker is watching.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PRELOAD = "flows.study"  # the study flow's module: every library a study run imports
HEADER = struct.Struct("!I")  # request length; the exit status goes back as "!i"
# read once, at import or start-up (torch's threads, CUDA devices, the module path): a run whose
# environment differs in any of them starts cold
IMPORT_TIME_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTHONHASHSEED",
                   "LD_LIBRARY_PATH", "LD_PRELOAD")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"the engine process hung up after {len(data)} of {n} bytes")
        data += chunk
    return data


def _source_files() -> dict[str, int]:
    """mtime of every imported module file of the project and of medops: what a cold start
    would read again."""
    import medops

    roots = (f"{PROJECT}{os.sep}", f"{Path(medops.__file__).parent}{os.sep}")
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(roots) and os.path.exists(path):
            files[path] = os.stat(path).st_mtime_ns
    return files


def _changed_file(imported: dict[str, int]) -> str | None:
    """The first imported source file that changed (or went) since, if any."""
    changed = sorted(p for p, t in imported.items() if not os.path.exists(p) or os.stat(p).st_mtime_ns != t)
    return changed[0] if changed else None


def _why_not(request: dict) -> str | None:
    """Why a run in this process would not start as a cold one would, or None."""
    differs = [k for k in IMPORT_TIME_ENV if request["env"].get(k) != os.environ.get(k)]
    if differs:
        k = differs[0]
        return f"{k}={request['env'].get(k)!r} in the run's environment, {os.environ.get(k)!r} in this process's"
    # one interpreter under two names (python, python3) in one environment is the same
    same = (os.path.realpath(request["executable"]) == os.path.realpath(sys.executable)
            and request.get("prefix") == sys.prefix)
    if not same:
        return (f"the run asks for {request['executable']} (environment {request.get('prefix')}), this process is "
                f"{sys.executable} ({sys.prefix})")
    return None


def _watch(conn: socket.socket) -> None:
    """Pass on the engine process's signals; end this one the moment that one is gone."""
    while True:
        try:
            message = conn.recv(1)
        except OSError:
            message = b""
        if message == b"T":
            os.kill(os.getpid(), signal.SIGTERM)
        elif message == b"I":
            os.kill(os.getpid(), signal.SIGINT)
        else:  # hung up: its worker killed it, or it was killed with the worker
            os.kill(os.getpid(), signal.SIGKILL)


def _run_engine(request: dict, fds: list[int]) -> int:
    """Prefect's engine, as `python flows/engine.py` would have run it, in this process."""
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = request["argv"]
    sys.stdout.flush(), sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # Prefect read its settings at import, from the warm engine's environment
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # Prefect's and MLflow's flushes, then the heap freeze (medops.exiting)
    sys.stdout.flush(), sys.stderr.flush()
    return status


def _take_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    header += _recv_exact(conn, HEADER.size - len(header))
    return json.loads(_recv_exact(conn, HEADER.unpack(header)[0])), fds


def _run(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """The forked child: one run, then exit with its status."""
    import numpy as np

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is not the run's
    np.random.seed()  # a cold process seeds NumPy's global generator at import; Python's random reseeds at fork
    print(f"run {os.getpid()}: {' '.join(request['argv'])} for engine process {request['pid']}", flush=True)
    threading.Thread(target=_watch, args=(conn,), daemon=True).start()
    status = _run_engine(request, fds)
    try:
        conn.sendall(struct.pack("!i", status))
    finally:
        os._exit(status)


def _reap() -> bool:
    """Collect the runs that have ended, so none is left a zombie; True while some still run."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def serve(socket_path: Path) -> None:
    """Import the study run's code once, then fork a child for every run handed over on socket_path."""
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # mode 600 from the start: only this user may hand over a run
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(8)  # before the imports: a run that comes meanwhile waits for them
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        started = time.perf_counter()
        sys.path.insert(0, str(PROJECT))
        importlib.import_module(PRELOAD)
        sys.path.remove(str(PROJECT))  # as in a cold start, where the deployment's pull step adds it
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
            raise SystemExit(f"importing {PRELOAD} initialised CUDA, which a forked run cannot use")
        from medops.exiting import freeze_heap_at_exit

        freeze_heap_at_exit()
        imported = _source_files()
        gc.freeze()
        print(f"warm engine {os.getpid()}: ready after {time.perf_counter() - started:.1f} s of imports", flush=True)
        while True:
            readable = select.select([listener], [], [], 5)[0]
            _reap()
            if readable:
                _hand_over(listener, imported, socket_path)
    finally:
        socket_path.unlink(missing_ok=True)
        deadline = time.time() + 5  # runs stopped with this process (`cluster down` signals the group)
        while time.time() < deadline and _reap():
            time.sleep(0.05)


def _hand_over(listener: socket.socket, imported: dict[str, int], socket_path: Path) -> None:
    """Take one run from the socket: fork a child for it, or tell the engine process why not."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        request, fds = _take_request(conn)
        changed = _changed_file(imported)
        why_not = f"{changed} changed since this process imported it" if changed else _why_not(request)
        conn.sendall(b"NO" + why_not.encode() if why_not else b"OK")
    except (OSError, ValueError) as error:  # the engine process went away mid-request
        print(f"warm engine {os.getpid()}: no run taken: {error}", flush=True)
        why_not, changed = str(error), None
    if not why_not and os.fork() == 0:
        try:
            listener.close()
            _run(conn, request, fds)
        finally:
            os._exit(1)  # never back into the parent's loop
    conn.close()
    for fd in fds:
        os.close(fd)
    if changed:  # start over with the code as it is now; running children stay ours and are reaped
        print(f"warm engine {os.getpid()}: {changed} changed; importing afresh", flush=True)
        listener.close()
        os.execv(sys.executable, [sys.executable, __file__, "--socket", str(socket_path)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    serve(parser.parse_args().socket)


if __name__ == "__main__":
    main()
