"""Boot Prefect's temporary server while the training flow's imports run.

Without PREFECT_API_URL a flow starts a temporary server on its first API call, after torch,
MLflow and Optuna have imported: two waits in a row. Started from a thread first, the server's
process boots on another core while this one imports (bench/flow_startup.py measures it).
"""

from __future__ import annotations

import threading


def boot_temporary_server() -> threading.Thread | None:
    """Start the server Prefect would start anyway (None when an API URL is configured); join the
    thread before the first API call: Prefect's start marks the server running before it answers."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

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
