"""The command a pool worker starts for each study run: Prefect's engine (`python -m
prefect.engine`, which reads the flow run from PREFECT__FLOW_RUN_ID), then a fast exit
(medops.exiting): a worker with `--limit 1` takes the next study run only once this process has
ended. Run by path (`python "$MEDOPS_PROJECT_DIR/flows/engine.py"` through `sh -c`, as `medops
cluster up` deploys it), so it works from the temporary folder a process worker starts it in,
before the deployment's pull step moves to the worker's checkout.

Where the worker's environment names a warm engine (MEDOPS_WARM_ENGINE, a socket of
flows/warm_engine.py, as `medops cluster up` sets it), the run goes to a child that process
forks, with the study's libraries already imported; this one passes on its signals and exits
with the run's status. Without one, or when it declines, the engine runs here.
"""

import json
import os
import signal
import socket
import struct
import sys

GREETING_TIMEOUT = 120  # s; a warm engine still importing (just started) answers once its imports are done


def run_warm(path: str) -> int | None:
    """The run's exit status from the warm engine at path; None when it cannot take the run."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(GREETING_TIMEOUT)
    try:
        conn.connect(path)
        request = json.dumps({"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix, "argv": sys.argv,
                              "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
        conn.sendall(request)
        reply = conn.recv(4096)
    except OSError as error:
        print(f"warm engine {path}: {error}; starting the engine in this process", file=sys.stderr, flush=True)
        return None
    if reply[:2] != b"OK":
        why = reply[2:].decode(errors="replace") or "it hung up"
        print(f"warm engine {path} declined: {why}; starting the engine in this process", file=sys.stderr, flush=True)
        return None
    conn.settimeout(None)
    passed_on = []

    def pass_on(signum, _frame):  # the worker cancelling the run
        passed_on.append(signum)
        try:
            conn.send(b"T" if signum == signal.SIGTERM else b"I")
        except OSError:  # the run's process is already gone: the status read below says so
            pass

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    status = reply[2:]  # a run that ends at once may send its status with the greeting
    while len(status) < 4:
        chunk = conn.recv(4 - len(status))
        if not chunk:
            if passed_on:  # the run died of the signal: so does this process, as it would have cold
                signal.signal(passed_on[-1], signal.SIG_DFL)
                os.kill(os.getpid(), passed_on[-1])
            print(f"warm engine {path}: the run's process ended without an exit status", file=sys.stderr, flush=True)
            return 1
        status += chunk
    return struct.unpack("!i", status)[0]


if __name__ == "__main__":
    warm = os.environ.get("MEDOPS_WARM_ENGINE")
    status = run_warm(warm) if warm else None
    if status is not None:
        sys.exit(status)
    import runpy

    from medops.exiting import freeze_heap_at_exit

    freeze_heap_at_exit()
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
