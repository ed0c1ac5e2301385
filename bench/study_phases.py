"""Where a pool-mode study run's time goes, read back from the Prefect API (PREFECT_API_URL):
for every run of the `medops-study` flow, from its state history and its task runs,

  hand-off   the previous run Completed -> this one Pending (the worker polling; one worker only)
  start-up   Pending -> Running: the worker starts the process, which imports the flow and runs
             the deployment's pull steps
  set-up     Running -> the first task starts
  stages     the first task starts -> the last task ends (the work, plus each task's API calls)
  wind-down  the last task ends -> Completed

Prints the median of each over the runs. bench/fanout.py runs it against its one-worker cluster,
where runs follow each other; with more workers the hand-off is not meaningful.

    PREFECT_API_URL=http://127.0.0.1:4200/api python bench/study_phases.py
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

PHASES = ("hand-off", "start-up", "set-up", "stages", "wind-down")


def study_runs(client) -> list[dict]:
    """Each finished study run's state timestamps and task span."""
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["medops-study"])))
    found = []
    for run in runs:
        states = {s.type.value: s.timestamp for s in client.read_flow_run_states(run.id)}
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        spans = [(t.start_time, t.end_time) for t in tasks if t.start_time and t.end_time]
        if not spans or not {"PENDING", "RUNNING", "COMPLETED"} <= set(states):
            continue
        found.append({"pending": states["PENDING"], "running": states["RUNNING"], "completed": states["COMPLETED"],
                      "first_task": min(s for s, _ in spans), "last_task": max(e for _, e in spans)})
    return found


def phases(runs: list[dict]) -> dict[str, list[float]]:
    seconds = defaultdict(list)
    runs = sorted(runs, key=lambda r: r["pending"])
    for before, after in zip(runs, runs[1:]):
        seconds["hand-off"].append((after["pending"] - before["completed"]).total_seconds())
    for run in runs:
        seconds["start-up"].append((run["running"] - run["pending"]).total_seconds())
        seconds["set-up"].append((run["first_task"] - run["running"]).total_seconds())
        seconds["stages"].append((run["last_task"] - run["first_task"]).total_seconds())
        seconds["wind-down"].append((run["completed"] - run["last_task"]).total_seconds())
    return seconds


def main() -> None:
    with get_client(sync_client=True) as client:
        runs = study_runs(client)
    seconds = phases(runs)
    print(f"study runs: {len(runs)} (median seconds per run)")
    for name in PHASES:
        values = seconds.get(name)
        print(f"  {name:10s} {statistics.median(values):6.1f}" if values else f"  {name:10s}      -")


if __name__ == "__main__":
    main()
