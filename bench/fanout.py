"""Pool-mode fan-out: one grid of studies (2 datasets x 2 architectures, synthetic data) run
several ways in one process, each on a fresh `medops cluster` (PostgreSQL, MLflow server, Prefect
server), every torch process on one thread:

  local     the training flow runs the studies one after another in its own process
  pool x1   the same grid submitted to the `gpu` pool with one worker and its warm engine
            (flows/warm_engine.py), as `cluster up` starts it
  pool x2   ... with two workers (and their warm engines)
  cold x1, cold x2 (with --cold)   ... with no warm engine: every study run imports its libraries

The ways run `--repeats` times, in turn, the order reversed every other round: a shared host's
speed drifts by more than the effects measured (the 1-worker way took 74 s in one run and
48-57 s in the next), so each round's ratios come from runs minutes apart and the medians of those ratios are
what to quote. Prints the speed-up of two workers over one, the orchestration overhead per trial
of pool mode ((pool x1 - local) / trials), and where a 1-worker study run's time goes
(bench/study_phases.py, after each 1-worker run). Cluster start-up is not timed.

    python bench/fanout.py [--repeats 2] [--cold] [--trials 3] [--epochs 3] [--samples 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from synthetic import prepare_synthetic  # bench/synthetic.py

REPO = Path(__file__).resolve().parents[1]
GRID = {"pathmnist": ["baseline_cnn", "improved_cnn"], "breastmnist": ["baseline_cnn", "improved_cnn"]}


def make_project(root: Path, args) -> Path:
    project = root / "project"
    project.mkdir(parents=True)
    for name in ("prefect.yaml", "flows", "tasks"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"mirror": None, "datasets": {flag: {"source": "custom"} for flag in GRID}}
    params["experiments"] = {flag: {"archs": archs} for flag, archs in GRID.items()}
    params["train"].update(epochs=args.epochs, batch_size=32, device="cpu", patience=args.epochs,
                           augment={"enabled": False}, width=1)  # the models of the README's figures
    params["tune"].update(n_trials=args.trials, pruner={"type": "none", "n_startup_trials": 0, "n_warmup_steps": 0})
    params["quantize"]["enabled"] = False
    params["report"]["seeds"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare_synthetic(project, GRID, args.samples)
    return project


def timed_run(mode: str, workers: int, args, warm: bool = True) -> float:
    """Seconds of one training flow on a fresh cluster and project."""
    root = Path(tempfile.mkdtemp(prefix="medops-fanout-"))
    root.chmod(0o711)
    project = make_project(root, args)
    env = {**os.environ, "MEDOPS_PROJECT_DIR": str(project), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    folder = root / "cluster"
    subprocess.run([sys.executable, "-m", "medops", "cluster", "up", "--workers", str(workers), "--threads", "1", "--dir", str(folder),
                    "--warm" if warm else "--cold"],
                   cwd=project, env=env, check=True)
    from medops.cluster import load

    env.update(load(folder).env)
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flows.training", "--mode", mode], cwd=project, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        if mode == "pool" and workers == 1:
            subprocess.run([sys.executable, str(REPO / "bench" / "study_phases.py")], env=env, check=True)
        return seconds
    finally:
        subprocess.run([sys.executable, "-m", "medops", "cluster", "down", "--dir", str(folder)], env=env, check=False)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every way (default 2)")
    parser.add_argument("--cold", action="store_true", help="also the pool without warm engines")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    studies = sum(len(a) for a in GRID.values())
    trials = studies * args.trials
    # name: (mode, workers, warm); local starts no worker: no standby importing beside it
    ways = {"local": ("local", 1, False), "pool x1": ("pool", 1, True), "pool x2": ("pool", 2, True)}
    if args.cold:
        ways |= {"cold x1": ("pool", 1, False), "cold x2": ("pool", 2, False)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.repeats):
        for name in list(ways)[:: 1 if round_ % 2 == 0 else -1]:
            mode, workers, warm = ways[name]
            seconds[name].append(timed_run(mode, workers, args, warm=warm))
            print(f"round {round_ + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)

    def ratios(over: str, under: str) -> list[float]:
        return [a / b for a, b in zip(seconds[over], seconds[under])]

    def overheads(pool: str) -> list[float]:
        return [(p - loc) / trials for p, loc in zip(seconds[pool], seconds["local"])]

    print(f"grid: {studies} studies x {args.trials} trials x {args.epochs} epochs, {args.samples} images per set, "
          f"{os.cpu_count()} cores, {args.repeats} rounds")
    for name, values in seconds.items():
        print(f"{name:8s} {'  '.join(f'{v:6.1f}' for v in values)} s")
    speedups, pool_overheads = ratios("pool x1", "pool x2"), overheads("pool x1")
    print(f"speed-up, 2 workers over 1: {statistics.median(speedups):.2f}x median "
          f"(rounds: {'  '.join(f'{r:.2f}x' for r in speedups)})")
    print(f"orchestration overhead per trial (pool x1 - local) / {trials}: {statistics.median(pool_overheads):.2f} s "
          f"median (rounds: {'  '.join(f'{o:.2f}' for o in pool_overheads)}); per study run "
          f"{statistics.median(pool_overheads) * trials / studies:.2f} s")
    if args.cold:
        print(f"cold: speed-up {statistics.median(ratios('cold x1', 'cold x2')):.2f}x, overhead per trial "
              f"{statistics.median(overheads('cold x1')):.2f} s; warm engine against cold: 1 worker "
              f"{statistics.median(ratios('cold x1', 'pool x1')):.2f}x, 2 workers "
              f"{statistics.median(ratios('cold x2', 'pool x2')):.2f}x")


if __name__ == "__main__":
    main()
