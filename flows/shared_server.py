"""One Prefect server for every training flow of a command (`make run`: `dvc repro`).

Without PREFECT_API_URL each `train@<flag>` stage boots Prefect's temporary server for itself,
about 20 s per stage on a 2-core host. This starts one `prefect server start` (127.0.0.1, a free
port, no UI) as the command starts, points the command's flows at it and stops it when the
command ends (its log is kept when the command fails). It boots while the data stages run; a
flow that starts first waits for it (flows/server_boot.py). With PREFECT_API_URL already set
(environment or Prefect profile) the command runs as it is.

    python -m flows.shared_server dvc repro [args]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from medops.cluster import free_port

BOOTING = "MEDOPS_PREFECT_SERVER_LOG"  # set for the command: the server may still be booting; its log


def run_with_server(command: list[str]) -> int:
    from prefect.settings import PREFECT_API_URL  # the environment or the active Prefect profile

    if PREFECT_API_URL.value():
        return subprocess.call(command)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="medops-prefect-")) / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: stopped whole
            env={**os.environ, "PREFECT_UI_ENABLED": "false"})
    url = f"http://127.0.0.1:{port}/api"
    print(f"Prefect server for this run: {url} (log: {log})", file=sys.stderr)
    try:
        code = subprocess.call(command, env={**os.environ, "PREFECT_API_URL": url, BOOTING: str(log)})
    finally:
        _stop(server)
    if code == 0:
        shutil.rmtree(log.parent, ignore_errors=True)
    return code


def _stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m flows.shared_server <command> [args]", file=sys.stderr)
        return 2
    return run_with_server(command)


if __name__ == "__main__":
    sys.exit(main())
