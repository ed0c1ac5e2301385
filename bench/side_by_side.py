"""Seed runs, or a study's first trials, one after another in this process against side by side
in child processes, in one run.

    python bench/side_by_side.py [--stage seeds|trials] [--runs breastmnist:improved_cnn_pool_first:60 ...]
                                 [--seeds 1 2]

Needs data/processed/<flag> (run `make run` first). For each flag:arch:epochs, `seeds` trains
the dataset's recipe from params.yaml (as `make run`'s seeds stage does, test evaluation
included) with --seeds; `trials` runs the first two trials of the dataset's study (its recipe,
search space and pruner from params.yaml; epochs are the recipe's, not the spec's) in a
throwaway SQLite storage. Each first with processes 1 (report.processes or tune.processes),
then with auto; it prints both wall times and their ratio. What `auto` resolves to depends on
the host: on 2 cores, two children of one thread. Wall times include everything the stage
pays: the children's imports and the parent's layout and precision timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from medops import paths
from medops.config import load_params
from medops.runs import seed_runs
from medops.training.side_by_side import processes_for
from medops.training.tune import run_study

DEFAULT_RUNS = ["breastmnist:improved_cnn_pool_first:60", "pneumoniamnist:baseline_cnn_pool_first:12",
                "adrenalmnist3d:cnn3d_pool_first:12"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="flag:arch:epochs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--stage", choices=["seeds", "trials"], default="seeds")
    args = parser.parse_args()
    params = load_params()
    print(f"torch threads {torch.get_num_threads()}; auto runs {processes_for('auto', len(args.seeds), 'cpu')} "
          f"side by side")
    print("| run | epochs | in turn (s) | side by side (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.runs:
        flag, arch, epochs = spec.split(":")
        recipe = params.recipe(flag, arch)
        seconds = {}
        for processes in (1, "auto"):
            with tempfile.TemporaryDirectory() as out:
                tick = time.perf_counter()
                if args.stage == "seeds":
                    seed_runs(paths.processed_dir(flag), recipe, int(epochs), args.seeds, Path(out), processes)
                else:
                    budget = params.study_budget(flag).model_copy(update={"n_trials": 2, "processes": processes})
                    run_study(paths.processed_dir(flag), recipe, budget, f"{flag}-{arch}", f"sqlite:///{out}/optuna.db",
                              Path(out) / "trials")
                seconds[processes] = time.perf_counter() - tick
        shown = epochs if args.stage == "seeds" else recipe.epochs
        print(f"| {flag}/{arch} | {shown} | {seconds[1]:.1f} | {seconds['auto']:.1f} | "
              f"**{seconds[1] / seconds['auto']:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
