"""Static int8 with and without the reduced range, on a model `make run` trained, in one process.

    python bench/int8_range.py --flag pneumoniamnist models/pneumoniamnist/baseline_cnn_pool_first/trials/trial-0/best.pt
    python bench/int8_range.py --flag breastmnist A/best.pt B/best.pt C/best.pt   # an ensemble's members

Needs data/processed/<flag>. Exports the form (one checkpoint, or the average of several; --flip
adds flip TTA) as the pipeline does, then quantizes it statically (QDQ, per-channel, the same
256 calibration images) four ways and prints val/test AUC and ACC against fp32 ONNX Runtime and
the speed at batch 256 against it:
  u8s8 7-bit  uint8 activations, int8 weights on 7 bits: what the pipeline ships
  u8s8 8-bit  the same on the full 8 bits
  s8s8 8-bit  int8 activations and weights (ONNX Runtime's default)
  u8u8 8-bit  uint8 weights as well
On a CPU without VNNI, ONNX Runtime multiplies uint8 by int8 with VPMADDUBSW, whose int16 pair
sums saturate at 8 bits (the module docstring of medops.release.quantize): there the 8-bit u8s8
and s8s8 rows lose accuracy and the 7-bit row does not. u8u8 cannot saturate but takes other,
slower kernels. With VNNI every row should be as accurate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from medops import paths
from medops.config import load_params
from medops.data.processed import load_split, read_meta
from medops.release import quantize as q
from medops.release.inference import load_form, to_medmnist_layout
from medops.training.scoring import auc_and_acc

# name: (activations, weights, reduce_range), as quantize.quantize_static_onnx takes them
WAYS = {"u8s8 7-bit": ("QUInt8", "QInt8", True), "u8s8 8-bit": ("QUInt8", "QInt8", False),
        "s8s8 8-bit": ("QInt8", "QInt8", False), "u8u8 8-bit": ("QUInt8", "QUInt8", False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--flag", required=True)
    parser.add_argument("--flip", action="store_true", help="the form with flip test-time augmentation")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per variant")
    args = parser.parse_args()
    processed = paths.processed_dir(args.flag)
    task = read_meta(processed).task
    splits = {}
    for split in ("val", "test"):
        x, y = load_split(processed, split)
        splits[split] = (np.ascontiguousarray(to_medmnist_layout(x)), y)
    calibration = q.calibration_images(processed, load_params().quantize.calibration_size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = q.export_onnx(load_form(args.checkpoints, args.flip), splits["test"][0][:2], Path(tmp) / "fp32.onnx")
        prepared = q.prepare_for_quantization(fp32, Path(tmp) / "prepared.onnx")
        files = {"fp32 onnx": fp32}
        for name, (activations, weights, reduce_range) in WAYS.items():
            files[name] = q.quantize_static_onnx(prepared, Path(tmp) / f"{name.replace(' ', '-')}.onnx", calibration,
                                                 activations=activations, weights=weights, reduce_range=reduce_range)
        rows = {}
        for name, path in files.items():
            predict = q.onnx_predictor(path)
            scores = {s: auc_and_acc(splits[s][1], q.predict_all(predict, splits[s][0]), task) for s in ("val", "test")}
            rows[name] = (scores, q.throughput(predict, splits["test"][0], 256, args.seconds))
    base_scores, base_speed = rows["fp32 onnx"]
    print(f"{args.flag}: {len(args.checkpoints)} checkpoint(s){' + flip TTA' if args.flip else ''}\n")
    print("| variant | val AUC | ΔAUC | val ACC | ΔACC | test AUC | ΔAUC | test ACC | ΔACC | img/s b256 | vs fp32 ORT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (scores, speed) in rows.items():
        cells = []
        for split in ("val", "test"):
            for i in (0, 1):
                cells += [f"{scores[split][i]:.4f}", f"{scores[split][i] - base_scores[split][i]:+.4f}"]
        print(f"| {name} | {' | '.join(cells)} | {speed:.0f} | {speed / base_speed:.2f}x |")


if __name__ == "__main__":
    main()
