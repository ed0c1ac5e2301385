"""Orchestration overhead, in one process, against the same work without it.

    python bench/overhead.py [--trials 8]

1. Per trial: an Optuna study (SQLite storage) whose trials are logged as nested MLflow
   runs (SQLite store), inside a Prefect flow, against calling train() directly on the
   same trivial trial (1 epoch of 16 images). Prints medians and the overhead per trial.
2. Fixed: `dvc repro` on this project when nothing changed (run `make run` first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for key, value in {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(key, value)

import mlflow  # noqa: E402
from prefect import flow  # noqa: E402

from medops.lifecycle import tracking  # noqa: E402
from medops.config import DatasetParams, MlflowParams, TrainParams, TuneParams  # noqa: E402
from medops.data.info import resolve  # noqa: E402
from medops.data.preprocess import preprocess  # noqa: E402
from medops.data.synth import make_arrays  # noqa: E402
from medops.training.loop import train  # noqa: E402
from medops.training.tune import run_study  # noqa: E402

RECIPE = TrainParams(arch="baseline_cnn", epochs=1, batch_size=16, device="cpu", augment={"enabled": False},
                     resume=False, width=1.0)  # the model of the figures in the README


def trivial_data(root: Path) -> Path:
    import numpy as np

    raw = root / "raw.npz"
    np.savez(raw, **make_arrays(resolve("pathmnist"), 16))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return root / preprocess("pathmnist", DatasetParams(source="custom"), raw=raw, out=root / "processed")
    finally:
        os.chdir(cwd)


def direct(processed: Path, out: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        train(processed, RECIPE.model_copy(update={"lr": 1e-3 * (i + 1)}), out / f"direct-{i}")
        times.append(time.perf_counter() - start)
    return times


@flow(name="overhead-bench")
def orchestrated(processed: Path, root: Path, n: int) -> list[float]:
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), "bench")
    tune = TuneParams(n_trials=n, pruner={"type": "none"}, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    marks = []
    with mlflow.start_run() as parent:
        logger = tracking.TrialRuns(parent.info.run_id, {})

        class Timed:
            def trial(self, number, params):
                marks.append(time.perf_counter())
                return logger.trial(number, params)

        start = time.perf_counter()
        run_study(processed, RECIPE, tune, "bench", f"sqlite:///{root / 'optuna.db'}", root / "trials", Timed())
        marks.append(time.perf_counter())
    # time from one trial's start (storage, sampler, MLflow run) to the next one's
    return [b - a for a, b in zip([start, *marks[1:-1]], marks[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--skip-dvc", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        processed = trivial_data(root)
        direct(processed, root, 2)  # warm-up
        plain = direct(processed, root, args.trials)
        full = orchestrated(processed, root, args.trials)
    p, f = statistics.median(plain), statistics.median(full[1:])  # first trial pays storage creation
    print(f"per trial: direct train() {p:.3f} s, Optuna + MLflow + Prefect {f:.3f} s, overhead {f - p:.3f} s "
          f"(median of {args.trials}; ratio {f / p:.2f}x)")
    if not args.skip_dvc:
        dvc = str(Path(sys.executable).with_name("dvc"))  # this environment's DVC, activated or not
        status = subprocess.run([dvc, "status", "--json"], capture_output=True, text=True)
        if status.returncode or status.stdout.strip() not in ("{}", ""):
            print("dvc repro: skipped, the pipeline is not up to date (run `make run` first)")
            return
        start = time.perf_counter()
        subprocess.run([dvc, "repro"], capture_output=True, text=True, check=True)
        print(f"dvc repro with nothing to train: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
