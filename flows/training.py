"""Training flow: for each (dataset, architecture) the stage tasks tune, seeds, evaluate,
explain, quantize and register (tasks/training.py), then per dataset promote and model-card. `orchestration.mode: local` runs studies in this process; `pool` fans them out
as runs of the `study` deployment, picked up by `prefect worker start --pool gpu` on any host.

    python -m flows.training [--flag breastmnist]      (what `dvc repro` runs per dataset)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from medops.config import load_params
from medops.errors import MedopsError
from medops.logs import setup_logging
from flows.liveness import claim_and_mark_crashed
from tasks.training import model_card, promote, registered_summary, study_stages, training_metrics

STUDY_DEPLOYMENT = "medops-study/study"


@flow(name="medops-study", flow_run_name="study-{flag}-{arch}")
def study_flow(flag: str, arch: str, params_path: str = "params.yaml") -> dict:
    """One (dataset, architecture); the unit a GPU worker picks up from the pool."""
    _mark_dead_runs()
    return study_stages(flag, arch, params_path)


def _mark_dead_runs() -> None:
    for name in claim_and_mark_crashed(flow_run.id):
        get_run_logger().warning("flow run %s was left Running by a process that is gone: marked Crashed", name)


@flow(name="medops-train", log_prints=True)
def training_flow(params_path: str = "params.yaml", flags: list[str] | None = None) -> dict:
    logger = get_run_logger()
    _mark_dead_runs()
    params = load_params(Path(params_path))  # refuses unknown datasets/archs/search keys up front
    plan = {f: params.archs(f) for f in params.experiments if not flags or f in flags}
    missing = set(flags or []) - set(plan)
    if missing:
        raise MedopsError(f"no experiments listed for {', '.join(sorted(missing))} in {params_path}")

    results, failures = {}, {}
    for flag, archs in plan.items():
        summaries = {}
        for arch in archs:
            try:
                if params.orchestration.mode == "pool":
                    run = run_deployment(STUDY_DEPLOYMENT, parameters={"flag": flag, "arch": arch,
                                                                       "params_path": params_path})
                    if not run.state.is_completed():
                        raise MedopsError(f"deployment run {run.name} ended {run.state.name}")
                    summaries[arch] = registered_summary(flag, arch, params_path)
                else:
                    summaries[arch] = study_stages(flag, arch, params_path)
            except Exception as exc:  # one failed study must not stop the others
                logger.error("%s/%s failed: %s", flag, arch, exc)
                failures[f"{flag}/{arch}"] = str(exc)
        promotion = promote(flag, params_path) if summaries else None
        training_metrics(flag, summaries, promotion)
        if summaries:
            model_card(flag, promotion, params_path)
        results[flag] = {"summaries": summaries, "promotion": promotion}
    if failures:
        raise MedopsError("some studies failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failures.items()))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the medops training flow.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--flag", action="append", help="only these datasets (repeatable)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        training_flow(params_path=args.params, flags=args.flag)
    except MedopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
