"""Test AUC/ACC of the default recipe over several seeds, next to the MedMNIST v2 figures.

    python bench/quality.py [--seeds 0 1 2] [--runs breastmnist:improved_cnn ...]

Needs data/processed/<flag> (run `make run` first). Each run trains with the recipe the
pipeline uses for that dataset (train + experiments.<flag>.train in params.yaml, plus any
--set overrides) and no tuning; test metrics come from the best
validation checkpoint. Prints mean +- std per (dataset, architecture) and the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from medops import paths
from medops.cli import _apply_overrides
from medops.config import TrainParams, load_params, validate_section
from medops.experiment import train_and_evaluate
from medops.report import REFERENCE

DEFAULT_RUNS = ["breastmnist:improved_cnn", "pneumoniamnist:improved_cnn", "adrenalmnist3d:cnn3d"]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="flag:arch pairs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train key=value")
    parser.add_argument("--json", type=Path, help="also write all results here")
    args = parser.parse_args()
    params = load_params()

    rows, everything = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            flag, arch = run.split(":")
            aucs, accs = [], []
            for seed in args.seeds:
                recipe = params.recipe(flag, arch) if flag in params.experiments else params.train
                section = _apply_overrides({**recipe.model_dump(), "arch": arch, "seed": seed, "resume": False},
                                           args.overrides)
                cfg = validate_section(TrainParams, section, "train")
                out = Path(tmp) / f"{flag}-{arch}-{seed}"
                _, summary = train_and_evaluate(paths.processed_dir(flag), cfg, out, out)
                aucs.append(summary["test"]["auc"])
                accs.append(summary["test"]["acc"])
                everything[f"{run}:{seed}"] = {"test": {k: summary["test"][k] for k in ("auc", "acc")},
                                               "best_epoch": summary["best_epoch"], "seconds": summary["seconds"]}
                print(f"{run} seed {seed}: test AUC {aucs[-1]:.3f} ACC {accs[-1]:.3f} "
                      f"(best epoch {summary['best_epoch']}, {summary['seconds']:.0f}s)", flush=True)
            ref = REFERENCE.get(flag)
            rows.append((flag, arch, fmt(aucs), fmt(accs), f"{ref[0]:.3f} / {ref[1]:.3f}" if ref else "-"))

    print(f"\n| dataset | arch | test AUC (mean ± std, {len(args.seeds)} seeds) | test ACC | MedMNIST v2 ResNet-18 AUC / ACC |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
