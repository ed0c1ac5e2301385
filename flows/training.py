"""Training flow: for each (dataset, architecture) the stage tasks tune, seeds, evaluate,
explain, quantize and register (tasks/study.py), then per dataset promote and model-card
(tasks/dataset.py).

`orchestration.mode: local` runs the studies one after another in this process. `pool` submits
every study at once as a run of the `study` deployment (flows/study.py; plus
tune.workers_per_study - 1 runs that only add trials to it), picked up by `prefect worker start
--pool gpu` on any host; it waits for all of them, then runs each dataset's promotion gate and
model card here, without importing torch.

    python -m flows.training [--flag breastmnist] [--mode pool]   (dvc repro runs it per dataset)
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: Prefect's server boots while they run
    from flows.server_boot import boot_temporary_server

    _server_boot = boot_temporary_server()
    if _server_boot is not None:  # no shared server, so the studies run here: import them while it boots
        import tasks.study  # noqa: F401

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from medops.config import load_params
from medops.errors import MedopsError
from medops.exiting import freeze_heap_at_exit
from medops.logs import setup_logging
from flows.artifacts import publish as publish_artifacts
from flows.liveness import mark_dead_runs
from flows.run_logs import send_medops_logs
from tasks.dataset import model_card, promote, registered_summary, training_metrics

STUDY_DEPLOYMENT = "medops-study/study"
POLL_SECONDS = 0.5  # one API request per poll, for all the runs it waits for
READ_LIMIT = 200  # runs per request: the most a Prefect server returns by default


@flow(name="medops-train", log_prints=True)
def training_flow(params_path: str = "params.yaml", flags: list[str] | None = None, mode: str | None = None) -> dict:
    logger = get_run_logger()
    send_medops_logs()
    mark_dead_runs()
    params = load_params(Path(params_path))  # refuses unknown datasets/archs/search keys up front
    plan = {f: params.archs(f) for f in params.experiments if not flags or f in flags}
    missing = set(flags or []) - set(plan)
    if missing:
        raise MedopsError(f"no experiments listed for {', '.join(sorted(missing))} in {params_path}")
    mode = mode or params.orchestration.mode

    if mode == "pool":
        summaries, failures = _fan_out(plan, params.tune.workers_per_study, params.orchestration.resubmit_crashed,
                                       params_path)
    else:
        from tasks.study import study_stages  # torch and the rest: only where the studies run

        summaries, failures = {}, {}
        for flag, archs in plan.items():
            for arch in archs:
                try:
                    summaries[flag, arch] = study_stages(flag, arch, params_path)
                except Exception as exc:  # one failed study must not stop the others
                    logger.error("%s/%s failed: %s", flag, arch, exc)
                    failures[f"{flag}/{arch}"] = str(exc)

    results = {}
    for flag, archs in plan.items():
        done = {arch: summaries[flag, arch] for arch in archs if (flag, arch) in summaries}
        promotion = promote(flag, params_path) if done else None
        training_metrics(flag, done, promotion)
        card = model_card(flag, promotion, params_path) if done else None
        publish_artifacts(flag, done, promotion, card)
        results[flag] = {"summaries": done, "promotion": promotion}
    if failures:
        raise MedopsError("some studies failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failures.items()))
    return results


def _fan_out(plan: dict[str, list[str]], workers_per_study: int, resubmits: int,
             params_path: str) -> tuple[dict, dict]:
    """Submit every study to the pool at once, wait for all, and read what each registered.
    A study run that crashed (its host or worker died) is submitted again up to `resubmits`
    times; a failed study is reported and does not stop the others."""
    logger = get_run_logger()
    finishing, helpers = {}, []

    def submit(flag: str, arch: str, stages: str = "all") -> UUID:
        parameters = {"flag": flag, "arch": arch, "params_path": params_path, "stages": stages}
        return run_deployment(STUDY_DEPLOYMENT, parameters=parameters, timeout=0).id

    for flag, archs in plan.items():
        for arch in archs:
            finishing[flag, arch] = submit(flag, arch)
            helpers += [((flag, arch), submit(flag, arch, "tune")) for _ in range(workers_per_study - 1)]
    logger.info("submitted %d study runs to the pool (%d studies)", len(finishing) + len(helpers), len(finishing))
    states = _wait_for_runs([*finishing.values(), *(run for _, run in helpers)])
    for _ in range(resubmits):
        crashed = [study for study, run_id in finishing.items() if states[run_id].is_crashed()]
        if not crashed:
            break
        for flag, arch in crashed:
            logger.warning("%s/%s: its study run crashed (%s): submitting it again; its trials resume from their "
                           "checkpoints", flag, arch, states[finishing[flag, arch]].message or "no message")
            finishing[flag, arch] = submit(flag, arch)
        states.update(_wait_for_runs([finishing[study] for study in crashed]))

    summaries, failures = {}, {}
    for study, run_id in helpers:  # its trials were not lost: the finishing run ran the rest
        if not states[run_id].is_completed():
            logger.warning("a tune-only run of %s/%s ended %s", *study, states[run_id].name)
    for (flag, arch), run_id in finishing.items():
        state = states[run_id]
        try:
            if not state.is_completed():
                raise MedopsError(f"study run ended {state.name}: {state.message or 'see its logs in the Prefect UI'}")
            summaries[flag, arch] = registered_summary(flag, arch, params_path)
        except Exception as exc:
            logger.error("%s/%s failed: %s", flag, arch, exc)
            failures[f"{flag}/{arch}"] = str(exc)
    return summaries, failures


def _wait_for_runs(run_ids: list[UUID]) -> dict:
    """Each flow run's final state, polling the API (one request for all runs) until all are
    final; says every minute what it waits for (runs that stay Scheduled mean no worker is
    polling the pool)."""
    states, last_said = {}, time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            waiting = {}
            for run in _read_runs(client, [run_id for run_id in run_ids if run_id not in states]):
                if run.state is not None and run.state.is_final():
                    states[run.id] = run.state
                else:
                    waiting[run.id] = run.state.name if run.state else "Pending"
            if len(states) == len(run_ids):
                return states
            if time.monotonic() - last_said > 60:
                counts = Counter(waiting.values())
                get_run_logger().info("waiting for %s", ", ".join(f"{n} {s}" for s, n in counts.items()))
                last_said = time.monotonic()
            time.sleep(POLL_SECONDS)


def _read_runs(client, run_ids: list[UUID]) -> list:
    runs = []
    for i in range(0, len(run_ids), READ_LIMIT):
        chunk = run_ids[i:i + READ_LIMIT]
        runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the medops training flow.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--flag", action="append", help="only these datasets (repeatable)")
    parser.add_argument("--mode", choices=["local", "pool"], help="override orchestration.mode of the params file")
    freeze_heap_at_exit()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if __name__ == "__main__" and _server_boot is not None:
            _server_boot.join()
        training_flow(params_path=args.params, flags=args.flag, mode=args.mode)
    except MedopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
