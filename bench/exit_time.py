"""Interpreter exit time of the pipeline's short-lived processes, with and without freezing the
heap first (medops.exiting), alternating in one run:

  study run     what a training flow or a pool study run has imported (flows.study: torch,
                MLflow, Optuna, scikit-learn, Prefect)
  validate      a data stage with Great Expectations (medops.data.validate and GX)

Exit time is from the process's last line to its end as its parent sees it.

    python bench/exit_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"study run": "import flows.study", "validate": "import great_expectations, medops.data.validate"}


def exit_seconds(imports: str, freeze: bool) -> float:
    last = "from medops.exiting import freeze_heap_at_exit; freeze_heap_at_exit(); " if freeze else ""
    code = f"import time; {imports}; {last}print(time.time(), flush=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    printed = float(proc.stdout.readline())
    proc.wait()
    return time.time() - printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"| process | exit (s), as it was | exit (s), heap frozen | faster | median of {args.repeats} |")
    print("|---|---:|---:|---:|---|")
    for name, imports in CASES.items():
        plain, frozen = [], []
        for _ in range(args.repeats):  # alternating: the host's noise falls on both
            plain.append(exit_seconds(imports, False))
            frozen.append(exit_seconds(imports, True))
        a, b = statistics.median(plain), statistics.median(frozen)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.1f}x | saves {a - b:.2f} s per process |")


if __name__ == "__main__":
    main()
