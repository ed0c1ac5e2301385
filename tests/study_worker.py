"""A study worker process for tests: `python -m tests.study_worker <project> <n_trials> [epochs]`.

Runs (or continues) the study pathmnist-baseline_cnn of a test project, logging each
trial as a nested MLflow run, the way the training flow does.
"""

import os
import sys
from pathlib import Path

import mlflow

from medops import paths

from medops.lifecycle import tracking
from medops.config import MlflowParams, TuneParams
from medops.logs import setup_logging
from medops.training.tune import run_study
from tests.conftest import fast_recipe


def main() -> None:
    project, n_trials = Path(sys.argv[1]), int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    os.chdir(project)
    setup_logging()
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), "pathmnist")
    tune = TuneParams(n_trials=n_trials, pruner={"type": "none"},
                      space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    with mlflow.start_run(run_name=f"worker-{os.getpid()}") as parent:
        result = run_study(paths.processed_dir("pathmnist"), fast_recipe(epochs=epochs, batch_size=8), tune,
                           "pathmnist-baseline_cnn", f"sqlite:///{project / 'optuna.db'}",
                           paths.trials_dir("pathmnist", "baseline_cnn"), tracking.TrialRuns(parent.info.run_id, {}))
    print(f"best trial {result.best_trial}", flush=True)


if __name__ == "__main__":
    main()
