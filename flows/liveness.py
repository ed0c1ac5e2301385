"""Flow runs whose process died stay "Running" in Prefect: a SIGKILL or an out-of-memory kill
leaves nobody to report the end. Each training flow run records the process that runs it
(Prefect's own `infrastructure_pid`, "<host>:<pid>", the form workers use) and, when it starts,
marks Crashed every Running medops flow run of this host whose process is gone, with the
task runs it left Running. Runs on other hosts are left to the worker that owns them.
"""

from __future__ import annotations

import os
import socket

import psutil
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType, TaskRunFilter, TaskRunFilterState,
                                            TaskRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Crashed

FLOWS = ["medops-train", "medops-study"]


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead(owner: str | None, started) -> bool:
    """Whether the process an infrastructure_pid names on this host is gone (or is another
    process that took its pid after the run started)."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's run, or one this module did not record
    try:
        process = psutil.Process(int(pid))
    except psutil.NoSuchProcess:
        return True
    return started is not None and process.create_time() > started.timestamp() + 1


def claim_and_mark_crashed(flow_run_id) -> list[str]:
    """Record this process on the current run; mark dead runs Crashed. Returns their names."""
    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    marked = []
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id, infrastructure_pid=this_process())
        for run in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=FLOWS)),
                                         flow_run_filter=FlowRunFilter(state=running)):
            if run.id == flow_run_id or not _is_dead(run.infrastructure_pid, run.start_time):
                continue
            message = (f"process {run.infrastructure_pid} ended without reporting (killed?); "
                       f"marked by flow run {flow_run_id}")
            for task_run in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id={"any_": [run.id]}),
                    task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                        type=TaskRunFilterStateType(any_=[StateType.RUNNING])))):
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            marked.append(run.name)
    return marked


def mark_dead_runs() -> None:
    """claim_and_mark_crashed for the current flow run, saying which runs it marked."""
    for name in claim_and_mark_crashed(flow_run.id):
        get_run_logger().warning("flow run %s was left Running by a process that is gone: marked Crashed", name)
