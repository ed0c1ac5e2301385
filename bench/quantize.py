"""Int8 quantization on this CPU: every variant against fp32 eager, in one process.

    python bench/quantize.py [--flag pneumoniamnist] [--archs baseline_cnn resnet18] [--epochs 2]

Needs data/processed/<flag> (run `make run` first). Trains each architecture briefly with
the default recipe (a real model, so the accuracy deltas mean something), then builds and
measures the variants of medops.quantize (fp32 eager and ONNX, dynamic, static and
quantization-aware int8): file size, images/s at batch 1 and 256, test AUC/ACC, and the ratios
against fp32 eager. Goal for the best int8 variant: >= 2x the
throughput of fp32 eager at batch 256, >= 3.5x smaller, test AUC drop <= 0.01.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from medops import paths
from medops.config import TrainParams
from medops.quantize import markdown_table, quantize_checkpoint
from medops.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--archs", nargs="+", default=["baseline_cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per variant and batch size")
    parser.add_argument("--qat-epochs", type=int, default=1, help="quantization-aware training epochs (0: none)")
    args = parser.parse_args()
    processed = paths.processed_dir(args.flag)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.flag}, {args.epochs} epochs")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            cfg = TrainParams(arch=arch, epochs=args.epochs, batch_size=128, device="cpu")
            checkpoint = train(processed, cfg, Path(tmp) / arch).checkpoint
            report = quantize_checkpoint(checkpoint, processed, Path(tmp) / arch / "q", seconds=args.seconds,
                                         qat_epochs=args.qat_epochs)
            print(f"\n## {args.flag} / {arch}\n\n{markdown_table(report)}\n")
            print(f"registered: {report.best_int8 or 'none'} ({report.reason})")
            for v in report.variants:
                if v.name.startswith("int8"):
                    goal = v.speedup_b256 >= 2 and v.smaller >= 3.5 and v.delta_auc >= -0.01
                    print(f"{v.name}: {v.speedup_b256:.2f}x fp32 eager at batch 256, {v.smaller:.2f}x smaller, "
                          f"test AUC {v.delta_auc:+.4f} -> goal {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
