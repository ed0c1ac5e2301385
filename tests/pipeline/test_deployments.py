"""prefect.yaml deployed with the README's own commands (section "Prefect deployments and GPU
workers") against the session's Prefect server: what each host's workers will be handed."""

import json
import os
import re
import shlex
import subprocess

import pytest

from medops import cluster as medops_cluster
from tests.conftest import REPO

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
SECTION = README[README.index("### Prefect deployments and GPU workers"):]
BLOCK = re.search(r"```bash\n(.*?)```", SECTION, re.S).group(1)  # the section's first shell block


def sh(line: str, env: dict) -> str:
    proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def inspect(name: str, env: dict) -> dict:
    return json.loads(sh(f"prefect deployment inspect {shlex.quote(name)} -o json", env))


def test_the_readmes_deploy_commands_leave_each_worker_to_find_its_checkout(prefect_server_url, tmp_path):
    """Deployed from a shell where MEDOPS_PROJECT_DIR is set (as on a host that runs workers
    too), every deployment's pull step still names the variable, not this checkout; the study's
    engine command, as the README writes it, is the one `medops cluster up` deploys."""
    # the nightly schedule it deploys makes runs on a pool no test's worker polls
    env = {**os.environ, "PREFECT_API_URL": prefect_server_url, "MEDOPS_PROJECT_DIR": str(tmp_path / "some-checkout")}
    commands = [line.split("#")[0].strip() for line in BLOCK.splitlines()
                if line.startswith(("prefect work-pool create", "env -u MEDOPS_PROJECT_DIR prefect deploy"))]
    assert len(commands) == 3, BLOCK  # two pools and the deploy
    for command in commands:
        sh(command, env)
    placeholder = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MEDOPS_PROJECT_DIR }}"}}]
    pools = {"medops-rebuild/nightly-rebuild": "medops-cpu", "medops-train/train": "medops-cpu",
             "medops-study/study": "gpu"}
    for name, pool in pools.items():
        deployment = inspect(name, env)
        assert deployment["pull_steps"] == placeholder, name
        assert deployment["work_pool_name"] == pool, name
    nightly = inspect("medops-rebuild/nightly-rebuild", env)
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]

    option = re.search(r'`(--job-variable "command=[^`]*")`', SECTION)
    assert option, "the README names no engine command for the study deployment"
    sh(f"env -u MEDOPS_PROJECT_DIR prefect --no-prompt deploy --name study {option.group(1)}", env)
    command = inspect("medops-study/study", env)["job_variables"]["command"]
    assert command == medops_cluster.ENGINE_COMMAND
    assert shlex.split(command) == ["sh", "-c", 'exec python "$MEDOPS_PROJECT_DIR/flows/engine.py"']
