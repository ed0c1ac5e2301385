"""Int8 quantization on this CPU, on fully trained models: every variant against fp32, in one process.

    python bench/quantize.py [--flag pneumoniamnist] [--archs baseline_cnn resnet18] [--epochs N]

Needs data/processed/<flag> (run `make run` first). Trains each architecture with the recipe
the pipeline uses for the dataset (train + experiments.<flag>.train in params.yaml, early
stopping included; --epochs caps it), so the deltas are those of a model as registered, then
builds and measures the variants of medops.release.quantize (fp32 eager and ONNX, dynamic, static and
quantization-aware int8): file size, images/s at batch 1 and 256, val and test AUC/ACC, the
ratios against fp32 eager and against fp32 ONNX Runtime (what an int8 artifact competes with),
and which variant the pipeline would register. Goal for the registered variant: test AUC drop
<= 0.005, ACC drop <= 0.01, faster than fp32 ONNX Runtime.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from medops import paths
from medops.config import load_params
from medops.release.quantize import markdown_table, quantize_checkpoint
from medops.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--archs", nargs="+", default=["baseline_cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, help="cap the recipe's epochs (default: the recipe's own)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per variant and batch size")
    args = parser.parse_args()
    params = load_params()
    q = params.quantize
    processed = paths.processed_dir(args.flag)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.flag}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            recipe = params.recipe(args.flag, arch) if args.flag in params.experiments else params.train
            cfg = recipe.model_copy(update={"arch": arch, "device": "cpu", "resume": False})
            if args.epochs:
                cfg.epochs = args.epochs if cfg.epochs == "auto" else min(cfg.epochs, args.epochs)
            result = train(processed, cfg, Path(tmp) / arch)
            print(f"\n## {args.flag} / {arch} (best epoch {result.best_epoch} of {len(result.history)})\n")
            report = quantize_checkpoint(result.checkpoint, processed, Path(tmp) / arch / "q", q.calibration_size,
                                         q.max_auc_drop, args.seconds, q.qat_epochs, q.qat_lr, q.max_acc_drop,
                                         qat_when="always", evaluate="all")
            print(markdown_table(report) + "\n")
            print(f"registered: {report.best_int8 or 'none'} ({report.reason})")
            onnx = next(v for v in report.variants if v.name == "fp32 onnx")
            for v in report.variants:
                if v.name.startswith("int8"):
                    goal = v.delta_auc >= -0.005 and v.delta_acc >= -0.01 and v.images_per_s_b256 > onnx.images_per_s_b256
                    print(f"{v.name}: {v.images_per_s_b256 / onnx.images_per_s_b256:.2f}x fp32 ONNX Runtime and "
                          f"{v.speedup_b256:.2f}x fp32 eager at batch 256, {v.smaller:.2f}x smaller, test AUC "
                          f"{v.delta_auc:+.4f}, ACC {v.delta_acc:+.4f}, val AUC {v.delta_val_auc:+.4f}, "
                          f"ACC {v.delta_val_acc:+.4f} -> goal {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
