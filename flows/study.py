"""The study flow: one (dataset, architecture), the unit a pool worker picks up (the `study`
deployment of prefect.yaml). flows/training.py submits it in pool mode; the warm engine
(flows/warm_engine.py) imports this module ahead of the runs.
"""

from __future__ import annotations

from prefect import flow

from medops.errors import MedopsError
from medops.logs import setup_logging
from flows.liveness import mark_dead_runs
from flows.run_logs import send_medops_logs
from tasks.study import study_stages, tune_more


@flow(name="medops-study", flow_run_name="study-{flag}-{arch}-{stages}")
def study_flow(flag: str, arch: str, params_path: str = "params.yaml", stages: str = "all") -> dict:
    """One (dataset, architecture); the unit a GPU worker picks up from the pool. `stages="tune"`
    only adds trials to the study; the run with "all" waits for them and finishes the study."""
    setup_logging()  # medops progress (epochs, resumes, reused stages) in the worker's log too
    send_medops_logs()  # ... and in the Prefect UI
    mark_dead_runs()
    if stages == "tune":
        return tune_more(flag, arch, params_path)
    if stages != "all":
        raise MedopsError(f"stages must be 'all' or 'tune', not {stages!r}")
    return study_stages(flag, arch, params_path)
