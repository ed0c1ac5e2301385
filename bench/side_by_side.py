"""Seed runs one after another in this process against side by side in child processes, in one run.

    python bench/side_by_side.py [--runs breastmnist:improved_cnn_pool_first:60 ...] [--seeds 1 2]

Needs data/processed/<flag> (run `make run` first). For each flag:arch:epochs it trains the
dataset's recipe from params.yaml (as `make run`'s seeds stage does, test evaluation included)
with --seeds, first with report.processes 1, then with auto, and prints both wall times and
their ratio. What `auto` resolves to depends on the host: on 2 cores, two children of one thread.
Wall times include everything the stage pays: the children's imports and the parent's layout
and precision timing (once per process and model).
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

DEFAULT_RUNS = ["breastmnist:improved_cnn_pool_first:60", "pneumoniamnist:baseline_cnn_pool_first:12",
                "adrenalmnist3d:cnn3d_pool_first:12"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="flag:arch:epochs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
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
                seed_runs(paths.processed_dir(flag), recipe, int(epochs), args.seeds, Path(out), processes)
                seconds[processes] = time.perf_counter() - tick
        print(f"| {flag}/{arch} | {epochs} | {seconds[1]:.1f} | {seconds['auto']:.1f} | "
              f"**{seconds[1] / seconds['auto']:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
