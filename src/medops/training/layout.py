"""Which memory layout a model trains in: channels-last where it is measurably faster here.

Whether oneDNN (CPU) or cuDNN (GPU) runs a model faster with channels-last tensors depends on
the model, the batch and the processor: the same `baseline_cnn` step ran 1.36x faster with it on
a 2-core AVX-512 host and `cnn3d` 1.28x, and a CPU without those instructions may gain nothing or
lose. `train.channels_last: auto` therefore times a few training steps of a copy of the model in
both layouts on a real batch, on this host, steps of the two in turn, and keeps channels-last
only when it wins by MIN_GAIN. Both layouts compute the same function (the sums run in another
order), so the choice changes speed, not the recipe: it is not part of a run's fingerprint. On CUDA, `auto` takes
channels-last for 2D models without measuring (what cuDNN's tensor-core kernels want).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

MIN_GAIN = 1.1  # timings on a busy host wobble by a few percent: a smaller win is not one
WARMUP_STEPS, TIMED_STEPS = 2, 7  # oneDNN builds its kernels on the first calls of each variant
BUDGET_SECONDS = 10.0  # per comparison: a large model on a CPU is timed on fewer steps, never less than one
# A first timed pair this far apart decides: more steps cannot bring it near MIN_GAIN. bf16 on a CPU
# without bf16 instructions runs 4-17x slower, and timing it for all the steps cost 24 s of `make run`.
DECIDED = 2.0
_measured: dict[tuple, bool] = {}  # per process: trials and seed runs of one study measure once


def channels_last_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                  autocast: torch.dtype | None = None) -> Callable[[], float]:
    """A function that runs one training step of model on (x, y), with the forward pass in
    autocast if given, and returns its seconds (SGD at a rate that leaves the weights as good
    as unchanged: model is a copy made for timing)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step() -> float:
        tick = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        opt.step()
        return time.perf_counter() - tick

    return step


def paired_seconds(a: Callable[[], float], b: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Seconds of the timed steps of a and of b, run in turn: a busy moment of the host (a
    server, another process) slows both alike instead of the one timed while it lasts. The
    warm-up steps of each are not timed; a first timed pair DECIDED times apart is the last."""
    for _ in range(WARMUP_STEPS):
        a(), b()
    seconds_a, seconds_b, started = [], [], time.perf_counter()
    for _ in range(TIMED_STEPS):
        seconds_a.append(a())
        seconds_b.append(b())
        decided = len(seconds_a) == 1 and not 1 / DECIDED < seconds_a[0] / seconds_b[0] < DECIDED
        if decided or time.perf_counter() - started > BUDGET_SECONDS:
            break
    return seconds_a, seconds_b


def speed_ratio(a: Callable[[], float], b: Callable[[], float]) -> float:
    """How many times faster b's steps run than a's (medians of paired_seconds)."""
    seconds_a, seconds_b = paired_seconds(a, b)
    return statistics.median(seconds_a) / statistics.median(seconds_b)


def speedup(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> float:
    """How many times faster a training step runs channels-last than in the default layout
    (copies of the model; the model, its statistics and the random number generator are left
    as they were, so measuring never changes what is trained)."""
    fmt = channels_last_format(x)
    with torch.random.fork_rng(devices=[]):
        default = training_step(copy.deepcopy(model).train(), x.contiguous(), y, loss_fn)
        last = training_step(copy.deepcopy(model).to(memory_format=fmt).train(), x.contiguous(memory_format=fmt),
                             y, loss_fn)
        return speed_ratio(default, last)


def use_channels_last(choice: bool | str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                      arch: str) -> bool:
    """Whether to train in channels-last: as asked, or for `auto` as measured on this host."""
    if choice != "auto":
        return bool(choice)
    if x.device.type == "cuda":
        return x.dim() == 4
    key = (arch, tuple(x.shape), str(x.device), torch.get_num_threads())
    if key not in _measured:
        gain = speedup(model, x, y, loss_fn)
        _measured[key] = gain >= MIN_GAIN
        log.info("%s: a training step runs %.2fx as fast channels-last on this host (batch %s): %s", arch, gain,
                 tuple(x.shape), "channels-last" if _measured[key] else "default layout")
    return _measured[key]
