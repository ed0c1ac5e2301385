"""Pool-mode fan-out: one grid of studies (2 datasets x 2 architectures, synthetic data) run
five ways in one process, each on a fresh `medops cluster` (PostgreSQL, MLflow server, Prefect
server), every torch process on one thread:

  local     the training flow runs the studies one after another in its own process
  cold x1   the same grid submitted to the `gpu` pool with one worker and no warm engine
  pool x1   ... with one worker and its warm engine (flows/warm_engine.py), as `cluster up` starts it
  pool x2   ... with two workers (and their warm engines)
  cold x2   ... with two workers and no warm engines

and prints the speed-up of two workers over one, what the warm engines change, the orchestration
overhead per trial of pool mode ((pool x1 - local) / trials; the same for cold x1), and where a 1-worker study run's
time goes (bench/study_phases.py, after each 1-worker run). Cluster start-up is not timed.

    python bench/fanout.py [--trials 3] [--epochs 3] [--samples 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    studies = sum(len(a) for a in GRID.values())
    trials = studies * args.trials

    local = timed_run("local", 1, args, warm=False)  # no worker takes anything: no standby importing beside it
    cold1 = timed_run("pool", 1, args, warm=False)
    pool1 = timed_run("pool", 1, args)
    pool2 = timed_run("pool", 2, args)
    cold2 = timed_run("pool", 2, args, warm=False)
    print(f"grid: {studies} studies x {args.trials} trials x {args.epochs} epochs, {args.samples} images per set, "
          f"{os.cpu_count()} cores")
    print(f"local (one process)  {local:7.1f} s")
    print(f"pool, 1 worker, cold {cold1:7.1f} s   (no warm engine: every study run imports its libraries)")
    print(f"pool, 1 worker       {pool1:7.1f} s")
    print(f"pool, 2 workers      {pool2:7.1f} s")
    print(f"pool, 2 workers, cold {cold2:6.1f} s")
    print(f"speed-up, 2 workers over 1: {pool1 / pool2:.2f}x (cold: {cold1 / cold2:.2f}x)")
    print(f"warm engine against cold: 1 worker {cold1 / pool1:.2f}x, 2 workers {cold2 / pool2:.2f}x")
    print(f"orchestration overhead per trial (pool x1 - local) / {trials}: {(pool1 - local) / trials:.2f} s")
    print(f"                    per study run (pool x1 - local) / {studies}: {(pool1 - local) / studies:.2f} s")
    print(f"  without the warm engine, per trial: {(cold1 - local) / trials:.2f} s, per study run: "
          f"{(cold1 - local) / studies:.2f} s")


if __name__ == "__main__":
    main()
