"""The decision rule on real images made rare: an official set with one class thinned out.

    python bench/imbalance.py --flag adrenalmnist3d --share 0.11    # 3D, 11 % positives
    python bench/imbalance.py --flag pneumoniamnist --class 0 --share 0.10 --seeds 0 1 2

Needs data/raw/<flag>.npz (run `make run` first). Keeps every image of the other classes and
a seeded random subset of --class (default: the rarest in train) in each split, so that it
makes up --share of each split, then preprocesses the result into a throwaway folder (class
weights from the thinned train split, as the pipeline computes them) and trains the recipe a
dataset listed by name only gets, three ways per seed:
  default      class-weighted loss, predictions with the prior correction validation chose
  uncorrected  the same checkpoint with the correction left out (what the weights alone give)
  unweighted   plain cross-entropy (`weighted_loss: false`), trained separately
Prints test AUC and ACC (mean +- std over seeds), the majority-class rate of the test split,
and the model-quality issue's two rules for sets with no recipe: the default's ACC within
0.02 of the unweighted run's, its AUC within 0.01 of the weighted run's (the same checkpoint).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from medops import paths
from medops.config import DatasetParams, ExperimentParams, TrainParams, load_params, validate_section
from medops.data.info import SPLITS
from medops.data.npz import load_arrays
from medops.data.preprocess import preprocess
from medops.data.processed import read_meta
from medops.evaluation.metrics import compute_metrics
from medops.runs import train_and_evaluate
from medops.training.batches import Normalizer, load_tensors
from medops.training.checkpoint import model_from_checkpoint
from medops.training.scoring import predict_scores


def thinned(arrays: dict[str, np.ndarray], cls: int, share: float, seed: int) -> dict[str, np.ndarray]:
    """Each split with `cls` cut to `share` of its images (every other image kept)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        y = arrays[f"{split}_labels"].reshape(-1)
        rare, rest = np.flatnonzero(y == cls), np.flatnonzero(y != cls)
        keep_rare = max(1, round(share / (1 - share) * len(rest)))
        if keep_rare > len(rare):
            raise SystemExit(f"{split}: class {cls} has {len(rare)} images, {keep_rare} needed for a "
                             f"share of {share}; choose a smaller --share")
        keep = np.sort(np.concatenate([rest, rng.choice(rare, keep_rare, replace=False)]))
        out[f"{split}_images"] = arrays[f"{split}_images"][keep]
        out[f"{split}_labels"] = arrays[f"{split}_labels"][keep]
    return out


def uncorrected_test_metrics(checkpoint: Path, processed: Path) -> dict:
    """Test metrics of a checkpoint read without its prior correction."""
    model, _ = model_from_checkpoint(checkpoint, map_location="cpu")
    data = load_tensors(processed, "test", torch.device("cpu"))
    meta = read_meta(processed)
    scores, _ = predict_scores(model, data, Normalizer(meta, torch.device("cpu")), meta.task, offset=None)
    return compute_metrics(data.y.numpy(), scores, meta.task, meta.class_names)


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="adrenalmnist3d")
    parser.add_argument("--class", dest="cls", type=int, help="class to thin out (default: the rarest in train)")
    parser.add_argument("--share", type=float, default=0.11, help="its share of each split afterwards")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()

    params = load_params()
    params.experiments[args.flag] = ExperimentParams()  # listed by name only: the default recipe
    arch = params.archs(args.flag)[0]
    recipe = params.recipe(args.flag, arch)
    arrays = load_arrays(paths.raw_file(args.flag))
    train_y = arrays["train_labels"].reshape(-1)
    cls = args.cls if args.cls is not None else int(np.argmin(np.bincount(train_y)))

    results = {"default": ([], []), "uncorrected": ([], []), "unweighted": ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / f"{args.flag}.npz"
        np.savez(raw, **thinned(arrays, cls, args.share, seed=0))
        processed = tmp / "processed"
        cwd = os.getcwd()
        os.chdir(tmp)  # preprocess writes reports/<flag>/data_stats.json under the working folder
        try:
            preprocess(args.flag, DatasetParams(source="custom"), raw=raw.resolve(), out=processed)
        finally:
            os.chdir(cwd)
        test_y = np.load(processed / "test_labels.npy")
        majority = np.bincount(test_y).max() / len(test_y)
        print(f"{args.flag}, class {cls} thinned to {args.share:.0%} of each split: "
              f"train {len(np.load(processed / 'train_labels.npy'))} images; {arch}, the default recipe", flush=True)

        for seed in args.seeds:
            for weighted in (True, False):
                section = {**recipe.model_dump(), "seed": seed, "resume": False, "weighted_loss": weighted}
                cfg = validate_section(TrainParams, section, "train")
                out = tmp / f"{'weighted' if weighted else 'unweighted'}-{seed}"
                result, summary = train_and_evaluate(processed, cfg, out, out)
                arm = "default" if weighted else "unweighted"
                results[arm][0].append(summary["test"]["auc"])
                results[arm][1].append(summary["test"]["acc"])
                line = f"seed {seed} {arm}: test AUC {summary['test']['auc']:.3f} ACC {summary['test']['acc']:.3f}"
                if weighted:
                    plain = uncorrected_test_metrics(result.checkpoint, processed)
                    results["uncorrected"][0].append(plain["auc"])
                    results["uncorrected"][1].append(plain["acc"])
                    line += f" (uncorrected ACC {plain['acc']:.3f})"
                print(f"{line}, best epoch {summary['best_epoch']} of {summary['epochs']}, "
                      f"{summary['seconds']:.0f}s", flush=True)

    print(f"\n| way | test AUC ({len(args.seeds)} seeds) | test ACC |")
    print("|---|---|---|")
    for arm, (aucs, accs) in results.items():
        print(f"| {arm} | {fmt(aucs)} | {fmt(accs)} |")
    print(f"| majority class | 0.500 | {majority:.3f} |")
    mean = {arm: (statistics.mean(a), statistics.mean(b)) for arm, (a, b) in results.items()}
    acc_gap = mean["default"][1] - mean["unweighted"][1]
    auc_gap = mean["default"][0] - mean["uncorrected"][0]
    print(f"\ndefault ACC - unweighted ACC: {acc_gap:+.3f} (rule: >= -0.02, {'met' if acc_gap >= -0.02 else 'NOT met'})")
    print(f"default AUC - weighted AUC: {auc_gap:+.3f} (rule: >= -0.01, {'met' if auc_gap >= -0.01 else 'NOT met'})")


if __name__ == "__main__":
    main()
