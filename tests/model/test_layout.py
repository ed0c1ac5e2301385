"""Channels-last training: the same function as the default layout, chosen by measuring here
(timing it, like timing bf16 for training/precision.py, leaves the model alone)."""

import logging

import pytest
import torch

from medops.training import layout, precision
from medops.training.checkpoint import load_checkpoint
from medops.training.loop import train
from medops.training.models import InputSpec, build_model
from tests.conftest import fast_recipe, make_processed


@pytest.mark.parametrize("flag,arch", [("pathmnist", "improved_cnn"), ("organmnist3d", "cnn3d")])
def test_either_layout_trains_the_same_model(project, flag, arch):
    processed = make_processed(flag, samples=24)
    runs = {choice: train(processed, fast_recipe(arch=arch, epochs=2, channels_last=choice, resume=False),
                          project / str(choice)) for choice in (False, True)}
    for a, b in zip(runs[False].history, runs[True].history):
        # dropout masks come from the same generator state, so only the order of sums differs
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    for choice, run in runs.items():  # and each trained in the layout it was given
        weights = [w for w in load_checkpoint(run.checkpoint)["model"].values() if w.dim() >= 4 and w.shape[1] > 1]
        fmt = layout.channels_last_format(weights[0])
        assert all(w.is_contiguous(memory_format=fmt) and not w.is_contiguous() for w in weights) == choice


def test_measuring_the_layout_changes_nothing_that_is_trained(project, caplog, monkeypatch):
    monkeypatch.setattr(layout, "_measured", {})  # measure in this test, whatever ran before
    processed = make_processed("pathmnist", samples=24)
    with caplog.at_level(logging.INFO, logger="medops"):
        measured = train(processed, fast_recipe(arch="improved_cnn", epochs=1, channels_last="auto", resume=False),
                         project / "auto")
    assert "as fast channels-last on this host" in caplog.text
    plain = train(processed, fast_recipe(arch="improved_cnn", epochs=1, channels_last=False, resume=False),
                  project / "plain")
    # the timed steps ran on copies inside a forked random state: same dropout, same weights
    assert measured.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-3)


@pytest.mark.parametrize("measure", [layout.speedup, precision.bf16_speedup], ids=["layout", "bf16"])
def test_measuring_leaves_the_model_and_random_state_alone(measure):
    torch.manual_seed(0)
    model = build_model("improved_cnn", InputSpec(n_channels=1, n_classes=3, size=28, is_3d=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    rng = torch.random.get_rng_state()
    gain = measure(model, x, y, torch.nn.CrossEntropyLoss())
    assert gain > 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and next(model.parameters()).is_contiguous()


def test_asked_layouts_are_not_measured(monkeypatch):
    monkeypatch.setattr(layout, "speedup", lambda *a: pytest.fail("measured although a layout was given"))
    x, y = torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    assert layout.use_channels_last(True, None, x, y, None, "baseline_cnn") is True
    assert layout.use_channels_last(False, None, x, y, None, "baseline_cnn") is False


def test_a_slow_model_is_timed_on_fewer_steps(monkeypatch):
    model = build_model("baseline_cnn", InputSpec(n_channels=1, n_classes=2, size=28, is_3d=False))
    step = layout.training_step(model, torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long),
                                torch.nn.CrossEntropyLoss())
    monkeypatch.setattr(layout, "BUDGET_SECONDS", 0.0)
    assert [len(times) for times in layout.paired_seconds(step, step)] == [1, 1]
    monkeypatch.setattr(layout, "BUDGET_SECONDS", 60.0)
    assert [len(times) for times in layout.paired_seconds(step, step)] == [layout.TIMED_STEPS] * 2


@pytest.mark.parametrize("b_seconds, pairs", [(3.0, 1), (1 / 3, 1), (1.5, None), (1 / 1.5, None)])
def test_a_first_pair_far_apart_decides(b_seconds, pairs):
    # bf16 on a CPU without bf16 instructions: one timed pair says it loses; a closer race runs every step
    timed = layout.paired_seconds(lambda: 1.0, lambda: b_seconds)
    assert [len(times) for times in timed] == [pairs or layout.TIMED_STEPS] * 2


def test_the_two_variants_are_timed_in_turn():
    # a busy moment of the host then slows both alike, not only the one timed while it lasts
    order = []
    layout.paired_seconds(lambda: order.append("a") or 1.0, lambda: order.append("b") or 1.0)
    assert order == ["a", "b"] * (layout.WARMUP_STEPS + layout.TIMED_STEPS)
