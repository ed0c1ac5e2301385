"""Does torch.compile pay for training on this CPU? Eager against compiled training steps of
the same seeded model on synthetic batches, in one process, alternating (eager, compiled,
eager, compiled) and keeping the best of each:

    python bench/compile.py [--archs cnn3d baseline_cnn improved_cnn] [--steps 10] [--channels-last]

--channels-last puts model and batch in that layout for both, as the trainer does where it
measures faster (`train.channels_last: auto`): the comparison a training run would see.

Prints the first compiled steps' cost (the compile itself) and the steady images/s ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from medops.training.layout import channels_last_format
from medops.training.models import build_model
from medops.training.models.catalog import ARCHITECTURES, InputSpec

BATCH = {True: 32, False: 128}  # the batch sizes make run uses for 3D and 2D sets


def images_per_second(arch: str, compiled: bool, steps: int, channels_last: bool) -> tuple[float, float]:
    is_3d = ARCHITECTURES[arch].is_3d
    batch = BATCH[is_3d]
    x = torch.randn((batch, 1, 28, 28, 28) if is_3d else (batch, 1, 28, 28))
    y = torch.randint(0, 2, (batch,))
    torch.manual_seed(0)
    model = build_model(arch, InputSpec(1, 2, 28, is_3d)).train()
    if channels_last:
        layout = channels_last_format(x)
        model, x = model.to(memory_format=layout), x.contiguous(memory_format=layout)
    forward = torch.compile(model) if compiled else model
    optimiser, loss_fn = torch.optim.AdamW(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        optimiser.step()

    start = time.perf_counter()
    step(), step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cnn3d", "baseline_cnn", "improved_cnn"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true", help="both in the channels-last layout")
    args = parser.parse_args()
    layout = "channels-last" if args.channels_last else "default"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {layout} layout, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for arch in args.archs:
        best, first_compiled = {False: 0.0, True: 0.0}, None
        for compiled in (False, True, False, True):
            first, ips = images_per_second(arch, compiled, args.steps, args.channels_last)
            best[compiled] = max(best[compiled], ips)
            if compiled and first_compiled is None:
                first_compiled = first
        print(f"{arch}: eager {best[False]:.0f} img/s, compiled {best[True]:.0f} img/s "
              f"({best[True] / best[False]:.2f}x); first compiled steps {first_compiled:.1f} s")


if __name__ == "__main__":
    main()
