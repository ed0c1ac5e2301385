"""CPU the temporary Prefect server takes while a flow works, with all its services against
only those a training flow needs (recording flow and task runs and their events), in one run.

    python bench/prefect_server.py [--seconds 30]

Each case starts a fresh process that runs a flow of `--seconds` of busy tasks against its own
temporary server, and reports the CPU seconds the server's process tree used meanwhile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# loops that serve deployments, work pools and automations: a one-process flow needs none
NOT_NEEDED = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
              "TRIGGERS", "DB_VACUUM", "EVENT_LOGGER", "CLEANUP_RECONCILER")

CHILD = r'''
import sys, time, psutil
from prefect import flow, task

@task
def work(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(10_000))
    return seconds

@flow
def busy(total: float) -> None:
    for _ in range(int(total)):
        work(1.0)

me = psutil.Process()
busy(1.0)  # starts the temporary server
server = [p for p in me.children(recursive=True)]
before = sum(p.cpu_times().user + p.cpu_times().system for p in server)
busy(float(sys.argv[1]))
after = sum(p.cpu_times().user + p.cpu_times().system for p in server if p.is_running())
print(after - before)
'''


def server_cpu(seconds: float, env: dict) -> float:
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run([sys.executable, "-c", CHILD, str(seconds)], cwd=REPO, capture_output=True, text=True,
                             env={**env, "PREFECT_HOME": home}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_SERVICES_")}
    base.pop("PREFECT_API_URL", None)
    lean = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in NOT_NEEDED}
    every = server_cpu(args.seconds, base)
    needed = server_cpu(args.seconds, {**base, **lean})
    print(f"temporary server CPU during a {args.seconds:.0f} s flow: every service {every:.1f} s "
          f"({every / args.seconds:.0%} of a core), training services only {needed:.1f} s "
          f"({needed / args.seconds:.0%}); {every / max(needed, 1e-9):.1f}x less")


if __name__ == "__main__":
    main()
