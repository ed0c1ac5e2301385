"""Training-step speed by memory layout and CPU autocast, in one process, interleaved.

    python bench/layout.py [--rounds 5]

For each model (baseline_cnn at batch 128, improved_cnn at batch 32, cnn3d at batch 32, random
data of MedMNIST's 28 px shapes) it times forward + backward + AdamW steps in PyTorch's default
layout, channels-last, and each of those under bf16 autocast, after warm-up steps (oneDNN builds
its kernels on the first calls), and prints the median images/s and the ratio to the default
layout. What `train.channels_last: auto` measures per host, shown for every option at once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medops.training.layout import channels_last_format
from medops.training.models import InputSpec, build_model

CASES = [  # arch, input spec, batch shape, timed steps per round
    ("baseline_cnn", InputSpec(1, 2, 28, False), (128, 1, 28, 28), 10),
    ("improved_cnn", InputSpec(1, 2, 28, False), (32, 1, 28, 28), 10),
    ("cnn3d", InputSpec(1, 2, 28, True), (32, 1, 28, 28, 28), 3),
]


def stepper(arch: str, spec: InputSpec, shape: tuple, channels_last: bool):
    torch.manual_seed(0)
    model = build_model(arch, spec).train()
    x, y = torch.randn(*shape), torch.randint(0, 2, (shape[0],))
    if channels_last:
        fmt = channels_last_format(x)
        model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    opt, loss_fn = torch.optim.AdamW(model.parameters()), torch.nn.CrossEntropyLoss()

    def step(bf16: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss_fn(out.float(), y).backward()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, oneDNN ISA "
          f"{torch.backends.cpu.get_cpu_capability()}")
    options = [("default", False, False), ("channels-last", True, False),
               ("default + bf16", False, True), ("channels-last + bf16", True, True)]
    for arch, spec, shape, n in CASES:
        steps = {layout: stepper(arch, spec, shape, layout) for layout in (False, True)}
        for _, layout, bf16 in options:  # warm-up
            steps[layout](bf16), steps[layout](bf16)
        rates = {name: [] for name, _, _ in options}
        for _ in range(args.rounds):
            for name, layout, bf16 in options:
                tick = time.perf_counter()
                for _ in range(n):
                    steps[layout](bf16)
                rates[name].append(shape[0] * n / (time.perf_counter() - tick))
        base = statistics.median(rates["default"])
        print(f"{arch} (batch {shape[0]}): " + ", ".join(
            f"{name} {statistics.median(r):.0f} img/s ({statistics.median(r) / base:.2f}x)" for name, r in rates.items()),
            flush=True)


if __name__ == "__main__":
    main()
