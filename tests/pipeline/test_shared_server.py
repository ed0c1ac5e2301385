"""`make run`'s one Prefect server (flows/shared_server.py): a real `prefect server start` that the
command's flows wait for, stopped with the command."""

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

# What a training flow does before its first API call, then one call of its own.
PROBE = """
import os, urllib.request
from flows.server_boot import SharedServer, boot_temporary_server
server = boot_temporary_server()
assert isinstance(server, SharedServer), server
server.join()
with urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=5) as answer:
    print("health", answer.status, os.environ["PREFECT_API_URL"])
"""


def shared(command: list[str], **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | env
    return subprocess.run([sys.executable, "-m", "flows.shared_server", *command], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=180)


def test_the_command_s_flows_reach_one_server_on_loopback_that_stops_with_it():
    run = shared([sys.executable, "-c", PROBE])
    assert run.returncode == 0, run.stdout + run.stderr
    status, url = re.search(r"health (\d+) (\S+)", run.stdout).groups()
    assert status == "200" and url.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):  # stopped with the command
        urllib.request.urlopen(url + "/health", timeout=2)
    log = Path(re.search(r"\(log: (\S+)\)", run.stderr).group(1))
    assert not log.parent.exists()  # nothing left behind after a run that succeeded


def test_a_failing_command_keeps_its_exit_code_and_the_server_log():
    run = shared([sys.executable, "-c", "raise SystemExit(3)"])
    assert run.returncode == 3
    log = Path(re.search(r"\(log: (\S+)\)", run.stderr).group(1))
    assert log.exists()
    log.unlink()
    log.parent.rmdir()


def test_a_configured_server_is_used_as_it_is():
    probe = "import os; print(os.environ['PREFECT_API_URL'], os.environ.get('MEDOPS_PREFECT_SERVER_LOG'))"
    run = shared([sys.executable, "-c", probe], PREFECT_API_URL="http://127.0.0.1:1/api")
    assert run.returncode == 0 and run.stdout.split() == ["http://127.0.0.1:1/api", "None"]
    assert "Prefect server for this run" not in run.stderr


def test_a_server_that_never_answers_is_named_with_its_log():
    from flows.server_boot import SharedServer
    from medops.errors import MedopsError

    with pytest.raises(MedopsError, match=r"the Prefect server at http://127.0.0.1:1/api did not answer within 1 s; "
                                          r"its log: /tmp/x/server.log"):
        SharedServer("http://127.0.0.1:1/api", "/tmp/x/server.log", timeout=1).join()


def test_a_server_set_in_the_active_prefect_profile_is_used_as_it_is(tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "remote"\n\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:1/api"\n')
    probe = "import os; print(os.environ.get('PREFECT_API_URL'), os.environ.get('MEDOPS_PREFECT_SERVER_LOG'))"
    run = shared([sys.executable, "-c", probe], PREFECT_PROFILES_PATH=str(profiles))
    assert run.returncode == 0 and run.stdout.split() == ["None", "None"], run.stdout + run.stderr
    assert "Prefect server for this run" not in run.stderr
