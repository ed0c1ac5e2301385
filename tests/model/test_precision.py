"""bf16 autocast of the training steps on a CPU: as asked, or where timed steps show it faster."""

import logging

import pytest
import torch

from medops.training import precision
from medops.training.loop import train
from tests.conftest import fast_recipe, make_processed


def _conv_output_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtypes of every Conv2d output in train mode (recorded by wrapping Conv2d.forward; the
    recipes below ask for a layout, so no layout is timed on copies meanwhile)."""
    seen, forward = [], torch.nn.Conv2d.forward

    def recording(self, x):
        out = forward(self, x)
        if self.training:
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording)
    return seen


@pytest.mark.parametrize("amp,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_the_training_steps_run_in_the_precision_asked(project, monkeypatch, amp, dtype):
    monkeypatch.setattr(precision, "bf16_speedup", lambda *a: pytest.fail("measured although amp was given"))
    processed = make_processed("pathmnist", samples=24)
    seen = _conv_output_dtypes(monkeypatch)
    run = train(processed, fast_recipe(arch="baseline_cnn", epochs=1, amp=amp, channels_last=False, resume=False), project / "run")
    assert seen and set(seen) == {dtype}
    assert all(isinstance(e["val_loss"], float) for e in run.history)


@pytest.mark.parametrize("gain,dtype", [(1.4, torch.bfloat16), (1.05, torch.float32)])
def test_auto_trains_in_bf16_only_where_measured_faster_and_measures_once(project, monkeypatch, caplog, gain, dtype):
    """The timing itself is the host's (test_layout.py runs it for real); given its answer,
    auto keeps bf16 only for a gain of at least MIN_GAIN, once per model and batch."""
    monkeypatch.setattr(precision, "_measured", {})
    monkeypatch.setattr(precision, "has_bf16_kernels", lambda: True)  # an AVX2-only host would not time
    calls = []
    monkeypatch.setattr(precision, "bf16_speedup", lambda *a: calls.append(a) or gain)
    processed = make_processed("pathmnist", samples=24)
    seen = _conv_output_dtypes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="medops"):
        for seed in (0, 1):
            train(processed, fast_recipe(arch="baseline_cnn", epochs=1, amp="auto", channels_last=False,
                                         resume=False, seed=seed),
                  project / str(seed))
    assert len(calls) == 1  # the second run of the same model and batch reuses the measurement
    assert seen and set(seen) == {dtype}
    assert f"runs {gain:.2f}x as fast in bf16 autocast on this host" in caplog.text


def test_auto_times_nothing_where_onednn_has_no_bf16_kernels(project, monkeypatch, caplog):
    monkeypatch.setattr(precision, "_measured", {})
    monkeypatch.setattr(precision, "has_bf16_kernels", lambda: False)
    monkeypatch.setattr(precision, "bf16_speedup", lambda *a: pytest.fail("timed bf16 on a CPU without its kernels"))
    processed = make_processed("pathmnist", samples=24)
    seen = _conv_output_dtypes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="medops"):
        train(processed, fast_recipe(arch="baseline_cnn", epochs=1, amp="auto", channels_last=False, resume=False),
              project / "run")
    assert seen and set(seen) == {torch.float32}
    assert "oneDNN has no bf16 kernels for this CPU: fp32" in caplog.text
