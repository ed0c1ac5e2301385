"""Start-up cost of the data stages: the commands `dvc repro` runs for download, validate,
preprocess and eda, for three datasets, with this checkout's code against an earlier commit's,
in the same run (the ratio is what to read; machines here are noisy).

    python bench/data_stages.py [--before 3515a50] [--flags breastmnist pneumoniamnist adrenalmnist3d]

Needs the official files in MEDOPS_MIRROR (default ../shared/medmnist). Each version runs in
its own empty project folder; the earlier commit's src/ and params.yaml come from `git archive`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "validate", "preprocess", "eda")


def checkout(ref: str, dest: Path) -> Path:
    """src/ and params.yaml of `ref`, unpacked into dest (nothing in the working tree changes):
    each version runs with the parameters its own schema accepts."""
    archive = subprocess.run(["git", "archive", ref, "src", "params.yaml"], cwd=REPO, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_stages(version: Path, project: Path, flags: list[str], env: dict) -> dict[str, float]:
    """Seconds per stage (summed over flags), each command a fresh process as under DVC."""
    project.mkdir(parents=True)
    shutil.copy(version / "params.yaml", project / "params.yaml")
    env = {**env, "PYTHONPATH": str(version / "src")}
    seconds = dict.fromkeys(STAGES, 0.0)
    for flag in flags:
        for stage in STAGES:
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "medops", "data", stage, flag], cwd=project, env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"medops data {stage} {flag} failed with {version}:\n{proc.stderr[-2000:]}")
            seconds[stage] += time.perf_counter() - started
    return seconds


def imports_torch(version: Path, env: dict) -> bool:
    probe = "import sys, medops.cli, medops.data.validate, medops.data.download, medops.data.preprocess, " \
            "medops.data.eda; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(version / "src")},
                         capture_output=True, text=True, check=True).stdout
    return out.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="3515a50", help="the commit to compare with")
    parser.add_argument("--flags", nargs="+", default=["breastmnist", "pneumoniamnist", "adrenalmnist3d"])
    args = parser.parse_args()
    env = {**os.environ, "MEDOPS_MIRROR": os.environ.get("MEDOPS_MIRROR", str(REPO.parent / "shared/medmnist"))}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {f"before ({args.before})": checkout(args.before, Path(tmp) / "before"), "now": REPO}
        results = {name: run_stages(version, Path(tmp) / f"project-{i}", args.flags, env)
                   for i, (name, version) in enumerate(versions.items())}
        torch = {name: imports_torch(version, env) for name, version in versions.items()}
    before, now = results.values()
    print(f"data stages of {', '.join(args.flags)}: seconds summed over datasets, one process per command\n")
    print("| stage | " + " | ".join(results) + " | speed-up |")
    print("|---|" + "---:|" * (len(results) + 1))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{r[stage]:.1f}" for r in results.values())
              + f" | {before[stage] / now[stage]:.2f}x |")
    total_before, total_now = sum(before.values()), sum(now.values())
    print(f"| all | {total_before:.1f} | {total_now:.1f} | {total_before / total_now:.2f}x |")
    print("\nimports torch: " + ", ".join(f"{name}: {'yes' if t else 'no'}" for name, t in torch.items()))


if __name__ == "__main__":
    main()
