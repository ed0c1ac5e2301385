"""The quantize stage with and without the batch-32 screen, on the form `make run` registered.

    python bench/quantize_screen.py [--flag adrenalmnist3d] [--arch cnn3d_pool_first] [--repeats 3]

Needs a finished `make run` (the evaluate stage's record under models/<flag>/<arch>/stages/
names the registered form: its checkpoints and flip TTA). Runs the stage's own call,
medops.release.quantize.quantize_checkpoint with params.yaml's quantize section, alternately
as shipped (an int8 variant under SCREEN_RATIO of fp32 ONNX Runtime at batch 32 is timed no
further) and with the screen off (every variant timed at batch 1, 32 and 256), --repeats times
each, and prints the median seconds of each way, their ratio, and whether both registered the
same int8 variant (or none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from medops import paths
from medops.config import load_params
from medops.release import quantize as int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="adrenalmnist3d")
    parser.add_argument("--arch", help="default: the dataset's first architecture in params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = load_params()
    arch = args.arch or params.archs(args.flag)[0]
    record = paths.model_dir(args.flag, arch) / "stages" / "evaluate.json"
    if not record.exists():
        raise SystemExit(f"{record}: not found; run `make run` first")
    form = json.loads(record.read_text())["result"]["form"]
    q = params.quantize
    print(f"{args.flag}/{arch}: {form['name']}", flush=True)

    seconds, chosen = {"screened": [], "unscreened": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for way, screen in (("screened", True), ("unscreened", False)):
                start = time.perf_counter()
                report = int8.quantize_checkpoint(
                    [Path(c) for c in form["checkpoints"]], paths.processed_dir(args.flag), Path(tmp) / way,
                    q.calibration_size, q.max_auc_drop, q.seconds, q.qat_epochs, q.qat_lr, q.max_acc_drop,
                    flip=form["flip_tta"], qat_when=q.qat_when, evaluate=q.evaluate, screen=screen)
                seconds[way].append(time.perf_counter() - start)
                chosen.setdefault(way, set()).add(report.best_int8)
                print(f"repeat {repeat} {way}: {seconds[way][-1]:.1f} s, registers {report.best_int8 or 'no int8 variant'}",
                      flush=True)
            if repeat == 0:
                print(int8.markdown_table(report), flush=True)

    screened, unscreened = (statistics.median(seconds[w]) for w in ("screened", "unscreened"))
    print(f"\nmedian of {args.repeats}: screened {screened:.1f} s, unscreened {unscreened:.1f} s, "
          f"{unscreened / screened:.2f}x; same int8 choice: {'yes' if chosen['screened'] == chosen['unscreened'] else 'NO'} "
          f"({', '.join(sorted(str(c) for c in chosen['screened'] | chosen['unscreened']))})")


if __name__ == "__main__":
    main()
