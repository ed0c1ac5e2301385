"""How often the bf16-or-fp32 measurement of `train.amp: auto` picks wrong on a host with
bursts of other work (servers, other processes): the trainer's way (training/layout.py:
steps of the two variants in turn, 2 warm-up and up to 7 timed each) against timing all fp32
steps, then all bf16 steps (2 warm-up, 3 timed, the trainer's way before). Two background
processes are busy 150 ms of every 500 ms. Prints, per way, the spread of the measured
bf16/fp32 speed-up of `baseline_cnn` (batch 128, channels-last) over --rounds measurements,
and how many fell below layout.MIN_GAIN (fp32 chosen). Meaningful on a CPU where bf16 wins.

    python bench/timing_noise.py [--rounds 40] [--quiet]   # --quiet: no background bursts
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys

import torch

from medops.training import layout, precision
from medops.training.models.catalog import InputSpec, build_model

BURSTS = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.15: pass\n    time.sleep(0.35)\n"


def one_after_the_other(model, x, y, loss_fn) -> float:
    def seconds(autocast):
        step = layout.training_step(copy.deepcopy(model).train(), x, y, loss_fn, autocast)
        for _ in range(2):
            step()
        return statistics.median(step() for _ in range(3))

    return seconds(None) / seconds(torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--quiet", action="store_true", help="no background bursts")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("baseline_cnn", InputSpec(n_channels=1, n_classes=2, size=28, is_3d=False))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y, loss_fn = torch.randint(0, 2, (128,)), torch.nn.CrossEntropyLoss()
    background = [] if args.quiet else [subprocess.Popen([sys.executable, "-c", BURSTS]) for _ in range(2)]
    try:
        before, now = [], []
        for _ in range(args.rounds):  # alternating, so both ways meet the same host
            before.append(one_after_the_other(model, x, y, loss_fn))
            now.append(precision.bf16_speedup(model, x, y, loss_fn))
    finally:
        for process in background:
            process.kill()
    print(f"{torch.get_num_threads()} threads, {'no bursts' if args.quiet else '2 background processes in bursts'}")
    for name, ratios in (("one after the other (before)", before), ("in turn (the trainer)", now)):
        ratios = sorted(ratios)
        wrong = sum(r < layout.MIN_GAIN for r in ratios)
        print(f"{name:30s} min {ratios[0]:.2f}  median {statistics.median(ratios):.2f}  max {ratios[-1]:.2f}  "
              f"fp32 chosen {wrong}/{len(ratios)}")


if __name__ == "__main__":
    main()
