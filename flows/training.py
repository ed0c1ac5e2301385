"""Training flow: for each (dataset, architecture) the stage tasks tune, seeds, evaluate,
explain, quantize and register (tasks/study.py), then per dataset promote and model-card
(tasks/dataset.py).

`orchestration.mode: local` runs the studies one after another in this process. `pool` submits
every study at once as a run of the `study` deployment (flows/study.py; plus
tune.workers_per_study - 1 runs that only add trials to it), picked up by `prefect worker start
--pool gpu` on any host; as soon as all the study runs of a dataset have ended it runs that
dataset's promotion gate and model card here, without importing torch, while the others go on.

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
from collections.abc import Callable
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

    results, failures = {}, {}

    def finish(flag: str, summaries: dict[str, dict]) -> None:
        try:
            results[flag] = _finish_dataset(flag, summaries, params_path)
        except Exception as exc:  # one dataset's gate or card must not stop the other datasets
            logger.error("%s: promotion or model card failed: %s", flag, exc)
            failures[f"{flag} (promotion, model card)"] = str(exc)

    if mode == "pool":
        failures.update(_fan_out(plan, params.tune.workers_per_study, params.orchestration.resubmit_crashed,
                                 params_path, finish))
    else:
        from tasks.study import study_stages  # torch and the rest: only where the studies run

        for flag, archs in plan.items():
            summaries = {}
            for arch in archs:
                try:
                    summaries[arch] = study_stages(flag, arch, params_path)
                except Exception as exc:  # one failed study must not stop the others
                    logger.error("%s/%s failed: %s", flag, arch, exc)
                    failures[f"{flag}/{arch}"] = str(exc)
            finish(flag, summaries)
    if failures:
        raise MedopsError("some studies failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failures.items()))
    return results


def _finish_dataset(flag: str, summaries: dict[str, dict], params_path: str) -> dict:
    """The dataset's promotion gate, training metrics, model card and Prefect artifacts, once
    all its studies have ended (failed ones left out)."""
    promotion = promote(flag, params_path) if summaries else None
    training_metrics(flag, summaries, promotion)
    card = model_card(flag, promotion, params_path) if summaries else None
    publish_artifacts(flag, summaries, promotion, card)
    return {"summaries": summaries, "promotion": promotion}


def _fan_out(plan: dict[str, list[str]], workers_per_study: int, resubmits: int, params_path: str,
             finish: Callable[[str, dict[str, dict]], None]) -> dict[str, str]:
    """Submit every study to the pool at once, then follow the runs. A study run that crashed
    (its host or worker died) is submitted again at once, up to `resubmits` times. A dataset is
    finished (`finish`, with what each of its studies registered) as soon as all its study runs
    have ended, while other datasets' studies go on. Returns the failed studies and why: one
    failed study does not stop the others."""
    logger = get_run_logger()
    finishing, helpers, retries = {}, {}, Counter()

    def submit(flag: str, arch: str, stages: str = "all") -> UUID:
        parameters = {"flag": flag, "arch": arch, "params_path": params_path, "stages": stages}
        return run_deployment(STUDY_DEPLOYMENT, parameters=parameters, timeout=0).id

    for flag, archs in plan.items():
        for arch in archs:
            finishing[flag, arch] = submit(flag, arch)
            helpers[flag, arch] = [submit(flag, arch, "tune") for _ in range(workers_per_study - 1)]
    logger.info("submitted %d study runs to the pool (%d studies)",
                len(finishing) + sum(map(len, helpers.values())), len(finishing))

    states, failures, unfinished, last_said = {}, {}, dict(plan), time.monotonic()

    def ended(study: tuple[str, str]) -> bool:
        return finishing[study] in states and all(run_id in states for run_id in helpers[study])

    with get_client(sync_client=True) as client:
        while True:
            watched = [*finishing.values(), *(run_id for runs in helpers.values() for run_id in runs)]
            waiting = _read_states(client, [run_id for run_id in watched if run_id not in states], states)
            for (flag, arch), run_id in finishing.items():
                if run_id in states and states[run_id].is_crashed() and retries[flag, arch] < resubmits:
                    logger.warning("%s/%s: its study run crashed (%s): submitting it again; its trials resume "
                                   "from their checkpoints", flag, arch, states[run_id].message or "no message")
                    retries[flag, arch] += 1
                    finishing[flag, arch] = submit(flag, arch)
            for flag in [f for f, archs in unfinished.items() if all(ended((f, a)) for a in archs)]:
                summaries = {}
                for arch in unfinished.pop(flag):
                    try:
                        summaries[arch] = _outcome(flag, arch, states[finishing[flag, arch]],
                                                   [states[run_id] for run_id in helpers[flag, arch]], params_path)
                    except Exception as exc:
                        logger.error("%s/%s failed: %s", flag, arch, exc)
                        failures[f"{flag}/{arch}"] = str(exc)
                finish(flag, summaries)
            if not unfinished:
                return failures
            if time.monotonic() - last_said > 60:
                logger.info("waiting for %s", ", ".join(f"{n} {s}" for s, n in waiting.items()))
                last_said = time.monotonic()
            time.sleep(POLL_SECONDS)


def _outcome(flag: str, arch: str, state, helper_states: list, params_path: str) -> dict:
    """What the study registered, read back from the registry (it ran on another host)."""
    for helper in helper_states:  # its trials were not lost: the finishing run ran the rest
        if not helper.is_completed():
            get_run_logger().warning("a tune-only run of %s/%s ended %s", flag, arch, helper.name)
    if not state.is_completed():
        raise MedopsError(f"study run ended {state.name}: {state.message or 'see its logs in the Prefect UI'}")
    return registered_summary(flag, arch, params_path)


def _read_states(client, run_ids: list[UUID], states: dict) -> Counter:
    """Adds the runs that have reached a final state to `states` (one API request per
    READ_LIMIT runs); returns how many of the others are in which state (runs that stay
    Scheduled mean no worker is polling the pool)."""
    waiting = Counter()
    for i in range(0, len(run_ids), READ_LIMIT):
        chunk = run_ids[i:i + READ_LIMIT]
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                         limit=len(chunk)):
            if run.state is not None and run.state.is_final():
                states[run.id] = run.state
            else:
                waiting[run.state.name if run.state else "Pending"] += 1
    return waiting


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
