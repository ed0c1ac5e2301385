"""How fast a processed split loads, against reading the same split from the raw npz.

    python bench/load_split.py [--flag pneumoniamnist]   (after `make run`)

Prints seconds per load (best of N) and the ratio raw / processed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medops import paths
from medops.data.processed import load_split


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    raw = paths.raw_file(args.flag)
    processed = paths.processed_dir(args.flag)

    def from_raw():
        with np.load(raw) as npz:
            npz["train_images"], npz["train_labels"]

    t_raw = best_of(from_raw, args.repeats)
    t_proc = best_of(lambda: load_split(processed, "train"), args.repeats)
    print(f"{args.flag} train split: raw npz {t_raw * 1e3:.2f} ms, processed {t_proc * 1e3:.2f} ms, "
          f"ratio raw/processed {t_raw / t_proc:.2f}x")


if __name__ == "__main__":
    main()
