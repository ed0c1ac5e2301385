"""Warm engine processes for a pool worker: a study run starts in a process that has already
imported torch, MLflow, Optuna, Prefect and the flow's code, instead of paying those 6-7 s of
imports after the worker picked it up.

    python flows/warm_engine.py --socket <dir>/warm-0.sock       # started by `medops cluster up`

This process (the keeper) listens on a Unix socket (mode 600) and keeps one *standby* ready: a
child that imports `flows.training`, then waits for one connection. flows/engine.py, the
command the worker starts for a study run, connects and hands over its arguments, environment,
working directory and stdio; the standby takes them as its own, runs Prefect's engine, sends
back the exit status and ends. Each standby runs one study run, so nothing is shared between
runs, and none is forked from a process with live threads; the keeper starts the next standby
as soon as one is taken, so its imports overlap the run before.

A standby declines (and the engine runs as before, in its own process) when the project's code
changed on disk since it was imported. If the engine process ends (the worker was killed), the
standby kills itself too: a run never outlives the process the worker is watching.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PRELOAD = "flows.training"  # the study flow's module: every library a study run imports
HEADER = struct.Struct("!I")  # request length; the exit status goes back as "!i"
# read once, at import or start-up (torch's threads, CUDA devices, the module path): a run whose
# environment differs in any of them starts cold
IMPORT_TIME_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTHONHASHSEED",
                   "LD_LIBRARY_PATH", "LD_PRELOAD")
TOOK_RUN, DECLINED = b"r", b"d"  # what a standby tells the keeper when it stops waiting
_running = threading.Event()  # this standby has taken its run


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


def _why_not(request: dict, imported: dict[str, int]) -> str | None:
    """Why this standby cannot run the request as a cold start would, or None."""
    changed = sorted(p for p, t in imported.items() if not os.path.exists(p) or os.stat(p).st_mtime_ns != t)
    if changed:
        return f"{changed[0]} changed since this process imported it"
    differs = [k for k in IMPORT_TIME_ENV if request["env"].get(k) != os.environ.get(k)]
    if differs:
        k = differs[0]
        return f"{k}={request['env'].get(k)!r} in the run's environment, {os.environ.get(k)!r} in this process's"
    if request["executable"] != sys.executable:
        return f"the run asks for {request['executable']}, this process is {sys.executable}"
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

    refresh_global_settings_context()  # Prefect read its settings at import, from the keeper's environment
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


def _exit_if_orphaned(keeper: int) -> None:
    """A waiting standby whose keeper is gone ends: nobody would start or stop it any more. (Once
    it runs a study, the engine process the worker watches is what it lives by.)"""
    while not _running.is_set():
        if os.getppid() != keeper:
            os._exit(0)
        time.sleep(1)


def _take_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    header += _recv_exact(conn, HEADER.size - len(header))
    return json.loads(_recv_exact(conn, HEADER.unpack(header)[0])), fds


def standby(listener_fd: int, report_fd: int) -> None:
    """Import the study run's code, take one run from the socket, run it, exit with its status."""
    started = time.perf_counter()
    sys.path.insert(0, str(PROJECT))
    importlib.import_module(PRELOAD)
    sys.path.remove(str(PROJECT))  # as in a cold start, where the deployment's pull step adds it
    from medops.exiting import freeze_heap_at_exit

    freeze_heap_at_exit()
    imported = _source_files()
    print(f"standby {os.getpid()}: ready after {time.perf_counter() - started:.1f} s of imports", flush=True)
    keeper = os.getppid()
    threading.Thread(target=_exit_if_orphaned, args=(keeper,), daemon=True).start()
    listener = socket.socket(fileno=listener_fd)
    conn, _ = listener.accept()
    _running.set()
    listener.close()
    try:
        request, fds = _take_request(conn)
        why_not = _why_not(request, imported)
        if why_not:
            conn.sendall(b"NO" + why_not.encode())
            os.write(report_fd, DECLINED)
            return
        conn.sendall(b"OK")
    except (OSError, ValueError) as error:  # the engine process went away mid-request
        print(f"standby {os.getpid()}: no run taken: {error}", flush=True)
        os.write(report_fd, DECLINED)
        return
    print(f"standby {os.getpid()}: running {' '.join(request['argv'])} for engine process {request['pid']}", flush=True)
    os.write(report_fd, TOOK_RUN)
    os.close(report_fd)
    threading.Thread(target=_watch, args=(conn,), daemon=True).start()
    status = _run_engine(request, fds)
    try:
        conn.sendall(struct.pack("!i", status))
    finally:
        os._exit(status)


def keep(socket_path: Path) -> None:
    """Keep one standby waiting on socket_path, until this process is stopped."""
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # mode 600 from the start: only this user may hand over a run
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    running: list[subprocess.Popen] = []
    waiting: subprocess.Popen | None = None
    backoff = 1.0
    try:
        while True:
            read_end, write_end = os.pipe()
            child = subprocess.Popen([sys.executable, __file__, "--standby", str(listener.fileno()), str(write_end)],
                                     pass_fds=(listener.fileno(), write_end), stdin=subprocess.DEVNULL, cwd=PROJECT)
            os.close(write_end)
            running.append(child)
            waiting = child
            while not select.select([read_end], [], [], 5)[0]:
                running = [p for p in running if p.poll() is None]  # reap finished runs
            why = os.read(read_end, 1)
            os.close(read_end)
            waiting = None
            if why == TOOK_RUN:
                backoff = 1.0
            elif why == DECLINED:
                pass  # it said why in the engine process's output; the next one imports afresh
            else:
                print(f"standby {child.pid} ended before taking a run (exit status {child.wait()}); "
                      f"next one in {backoff:.0f} s", flush=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
    finally:
        socket_path.unlink(missing_ok=True)
        if waiting is not None:  # a standby with no run stops with its keeper (and is reaped, not left a zombie)
            waiting.terminate()
            waiting.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, help="where to listen (the keeper)")
    parser.add_argument("--standby", nargs=2, type=int, metavar=("LISTENER_FD", "REPORT_FD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.standby:
        standby(*args.standby)
    elif args.socket:
        keep(args.socket)
    else:
        parser.error("--socket is required")


if __name__ == "__main__":
    main()
