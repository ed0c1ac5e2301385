"""Boot Prefect's temporary server while the training flow's imports run.

Without PREFECT_API_URL a flow starts a temporary server on its first API call, after torch,
MLflow and Optuna have imported: two waits in a row. Started from a thread first, the server's
process boots on another core while this one imports (bench/flow_startup.py measures it).
Under flows/shared_server.py (`make run`) the server is already booting: the flow waits for it.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request

from flows.shared_server import BOOTING


class SharedServer:
    """The server flows/shared_server.py started for this command; join() waits until it answers."""

    def __init__(self, api_url: str, log: str, timeout: float):
        self.api_url, self.log, self.timeout = api_url, log, timeout

    def join(self) -> None:
        from medops.errors import MedopsError

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise MedopsError(f"the Prefect server at {self.api_url} did not answer within "
                                      f"{self.timeout:.0f} s; its log: {self.log}") from None
                time.sleep(0.2)


def boot_temporary_server() -> threading.Thread | SharedServer | None:
    """Start the server Prefect would start anyway (None when an API URL is configured); join the
    thread before the first API call: Prefect's start marks the server running before it answers."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() and os.environ.get(BOOTING):
        return SharedServer(PREFECT_API_URL.value(), os.environ[BOOTING],
                            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        try:
            SubprocessASGIServer().start()  # the singleton get_client() uses; stopped at exit
        except Exception:  # noqa: BLE001 - the flow's own first call starts it again and reports why
            pass

    thread = threading.Thread(target=start, name="prefect-server-boot", daemon=True)
    thread.start()
    return thread
