"""Start-up of the training flow with and without booting Prefect's temporary server early.

`python -m flows.training` starts the temporary server from a thread before its heavy imports
(flows/server_boot.py); importing the module and calling main() does not, which is what the
flow did before. Both run the same finished study (a synthetic set, trained once up front), so
each run is start-up plus the flow's checks of what is already done. Runs alternate, in one
process, with their own Prefect home; prints the median wall time of each and the ratio.

    python bench/flow_startup.py [--rounds 3]
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
FLAG = "pathmnist"
EARLY = [sys.executable, "-m", "flows.training"]
LATE = [sys.executable, "-c", "import sys; from flows.training import main; sys.exit(main())"]


def make_project(root: Path) -> Path:
    for name in ("flows", "tasks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"mirror": None, "datasets": {FLAG: {"source": "custom"}}}
    params["experiments"] = {FLAG: {"archs": ["baseline_cnn"]}}
    params["train"].update(epochs=1, batch_size=16, device="cpu", augment={"enabled": False},
                           width=1)  # the model of the README's figures
    params["tune"].update(n_trials=1, pruner={"type": "none", "n_startup_trials": 0, "n_warmup_steps": 0})
    params["quantize"]["enabled"] = False
    params["report"]["seeds"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare_synthetic(root, [FLAG], 32)
    return root


def timed(cmd: list[str], project: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medops-flow-startup-") as tmp:
        project = make_project(Path(tmp) / "project")
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MEDOPS_OPTUNA_STORAGE"):
            env.pop(key, None)
        first = timed(EARLY, project, env)  # trains, registers and creates the stores
        print(f"first run (trains the study, creates the stores): {first:.1f} s", flush=True)
        times = {"early": [], "late": []}
        for i in range(args.rounds):
            for name, cmd in (("late", LATE), ("early", EARLY)):
                times[name].append(timed(cmd, project, env))
                print(f"round {i + 1} {name}: {times[name][-1]:.1f} s", flush=True)
        late, early = statistics.median(times["late"]), statistics.median(times["early"])
        print(f"\nflow run on a finished study, median of {args.rounds}: server booted after the imports "
              f"{late:.1f} s, booted during them {early:.1f} s: {late / early:.2f}x ({late - early:.1f} s saved)")


if __name__ == "__main__":
    main()
