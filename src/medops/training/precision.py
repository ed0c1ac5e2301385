"""Which precision a model's training steps run in: bf16 autocast on a CPU only where it is
measurably faster here.

On CUDA, `train.amp` (true or auto) trains in bf16 autocast, or fp16 with a gradient scaler on
a GPU without bf16. On a CPU it depends on the processor. On a 2-core host with AVX-512 BF16
instructions (AMD EPYC) bf16 made training steps 1.13-1.41x faster on top of channels-last
(bench/layout.py). Without them it was 1-14 % slower (AVX-512 without BF16) or 4-17x slower
(AVX2 only). So `amp: auto` times a few training steps of copies of the model in both
precisions, in turn, on a real batch in the layout already chosen, and keeps bf16 only when it
wins by layout.MIN_GAIN. Where oneDNN itself says it has no bf16 kernels for the CPU (the
AVX2-only host), nothing is timed: `make run`'s probes there measured bf16 steps at 0.07-0.10x
of fp32, and timing them cost 9 s for AdrenalMNIST3D's model, about 14 s per `make run`. `true`
asks for bf16 on a CPU without measuring. Either way weights, gradients, the optimiser and the
loss stay fp32 (autocast runs convolutions and matrix products in bf16), and validation and
test scoring on a CPU stay fp32, so metrics mean the same on every
host. The choice is logged with the measured ratio.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from medops.training.layout import MIN_GAIN, speed_ratio, training_step

log = logging.getLogger(__name__)

_measured: dict[tuple, bool] = {}  # per process: trials and seed runs of one study measure once


def bf16_speedup(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> float:
    """How many times faster a training step runs in bf16 autocast than in fp32 (copies of the
    model, their steps in turn; the model and the random number generator are left as they were)."""
    with torch.random.fork_rng(devices=[]):
        fp32 = training_step(copy.deepcopy(model).train(), x, y, loss_fn)
        bf16 = training_step(copy.deepcopy(model).train(), x, y, loss_fn, torch.bfloat16)
        return speed_ratio(fp32, bf16)


def has_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (True where PyTorch cannot say: then it is timed)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def training_autocast(choice: bool | str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                      arch: str, layout: str) -> torch.dtype | None:
    """The autocast dtype of the training steps (None: fp32); model and x are in the layout they
    train in, which layout names (channels-last | default)."""
    if choice is False:
        return None
    if x.device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if choice is True:
        return torch.bfloat16
    key = (arch, tuple(x.shape), str(x.device), torch.get_num_threads(), layout)
    if key not in _measured:
        _measured[key] = _bf16_wins(model, x, y, loss_fn, arch, layout)
    return torch.bfloat16 if _measured[key] else None


def _bf16_wins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, arch: str, layout: str) -> bool:
    """Whether bf16 training steps beat fp32 by MIN_GAIN here; not timed without bf16 kernels."""
    if not has_bf16_kernels():
        log.info("%s: oneDNN has no bf16 kernels for this CPU: fp32", arch)
        return False
    gain = bf16_speedup(model, x, y, loss_fn)
    log.info("%s: a training step runs %.2fx as fast in bf16 autocast on this host (batch %s, %s layout): %s",
             arch, gain, tuple(x.shape), layout, "bf16" if gain >= MIN_GAIN else "fp32")
    return gain >= MIN_GAIN
