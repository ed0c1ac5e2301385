"""A study worker process for tests:
`python -m tests.study_worker <project> <n_trials> [epochs] [--storage URL] [--store URL]`.

Runs (or continues) the study pathmnist-baseline_cnn of a test project, logging each
trial as a nested MLflow run, the way the training flow does. The study lives in the project's
optuna.db unless --storage names another; --store adds a checkpoint store. (Arguments, not
the MEDOPS_* variables: the test session clears those so a user's shell cannot reach into it.)
"""

import argparse
import os
import sys
from pathlib import Path

import mlflow

from medops import paths

from medops.lifecycle import tracking
from medops.config import MlflowParams, TuneParams
from medops.errors import MedopsError
from medops.logs import setup_logging
from medops.training.store import CheckpointStore
from medops.training.tune import run_study
from tests.conftest import fast_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path)
    parser.add_argument("n_trials", type=int)
    parser.add_argument("epochs", type=int, nargs="?", default=2)
    parser.add_argument("--storage")
    parser.add_argument("--store")
    # 1: trials in turn, as several workers sharing a host's cores run them (tune.processes)
    parser.add_argument("--processes", default="1")
    args = parser.parse_args()
    project = args.project
    os.chdir(project)
    setup_logging()
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), "pathmnist")
    tune = TuneParams(n_trials=args.n_trials, pruner={"type": "none"}, processes=args.processes,
                      space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    storage = args.storage or f"sqlite:///{project / 'optuna.db'}"
    try:
        with mlflow.start_run(run_name=f"worker-{os.getpid()}") as parent:
            result = run_study(paths.processed_dir("pathmnist"), fast_recipe(epochs=args.epochs, batch_size=8), tune,
                               "pathmnist-baseline_cnn", storage, paths.trials_dir("pathmnist", "baseline_cnn"),
                               tracking.TrialRuns(parent.info.run_id, {}),
                               store=CheckpointStore(args.store) if args.store else None)
    except MedopsError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)
    print(f"best trial {result.best_trial}", flush=True)


if __name__ == "__main__":
    main()
